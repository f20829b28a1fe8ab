//! `--cgidir`: CGI/1.1 (RFC 3875) scripts over plain HTTP.
//!
//! The URL path is decoded and cleaned as websocketd 0.5 does (`..` cannot climb above the
//! directory, so `/sub/../hello.sh` is `/hello.sh` and `/../x` is `/x`), must name a regular
//! file inside the directory once symlinks are resolved, and is run with the WebSocket
//! environment plus the request's CONTENT_LENGTH and CONTENT_TYPE. The request body streams to
//! the script's stdin; the script's header block (`Status:`, `Location:`, `Content-Type:`,
//! others) becomes the response head and the rest of its output streams back as the body,
//! through a small bounded queue. A malformed header block is a 502; a script silent for
//! `--cgi-timeout-ms` is killed (504 if it had not sent its headers). When the client leaves,
//! the script's process group is stopped as for a WebSocket program.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;

use crate::cgi_env::{self, Remote, ScriptPath};
use crate::child::ChildProcess;
use crate::http::{self, Body, Peer, Shared};

/// The largest header block a script may print.
const MAX_HEAD: usize = 64 * 1024;
/// Output chunks waiting for the client; beyond it the script waits on its pipe.
const BODY_QUEUE: usize = 8;

/// The script a URL path names inside `root` (canonical), if any.
pub fn resolve(root: &Path, raw_path: &str) -> Option<PathBuf> {
    let decoded = cgi_env::percent_decode(raw_path);
    let mut parts: Vec<&str> = Vec::new();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    let mut path = root.to_path_buf();
    path.extend(&parts);
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let real = std::fs::canonicalize(&path).ok()?;
    if !real.starts_with(root) {
        crate::access!(
            "http",
            "CGI: {} leads outside --cgidir: refused",
            path.display()
        );
        return None;
    }
    Some(path)
}

/// Runs `script` for the request.
pub async fn serve(
    shared: &Arc<Shared>,
    peer: &Peer,
    script: PathBuf,
    req: Request<Incoming>,
) -> Response<Body> {
    let config = &shared.config;
    let span = tracing::Span::current();
    span.record("command", script.to_string_lossy().as_ref());
    if !crate::config::is_executable_file(&script) {
        crate::error!("http", "CGI: the script is not executable");
        return http::refuse(
            config,
            StatusCode::FORBIDDEN,
            "the script for this path is not executable",
        );
    }
    let permit = match http::take_fork(shared) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let (id, remote) = http::identify(shared, peer, &req, &span).await;
    let (parts, body) = req.into_parts();
    let script_name = format!(
        "/{}",
        script
            .strip_prefix(config.cgi_dir.as_deref().unwrap_or(Path::new("/")))
            .unwrap_or(&script)
            .to_string_lossy()
    );
    let env = environment(config, &parts, &remote, &script_name, &id);
    let mut child = match ChildProcess::spawn(&script, &[], env) {
        Ok(c) => c,
        Err(e) => {
            crate::error!("process", "Could not launch CGI script ({e})");
            let status = if crate::admission::is_exhaustion(&e) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return http::refuse(config, status, "the script could not be started");
        }
    };
    span.record("pid", child.pid().to_string().as_str());
    crate::access!("http", "CGI");

    // The request body, streamed to stdin in the background.
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(
            async move {
                let mut body = body;
                while let Some(frame) = body.frame().await {
                    let frame = match frame {
                        Ok(f) => f,
                        Err(e) => {
                            crate::debug!("http", "CGI: reading the request body: {e}");
                            break;
                        }
                    };
                    if let Ok(data) = frame.into_data() {
                        if stdin.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(
            crate::session::pump_stderr(stderr, None, config.max_line_bytes).in_current_span(),
        );
    }
    let Some(mut stdout) = child.stdout.take() else {
        return http::refuse(config, StatusCode::BAD_GATEWAY, "the script has no output");
    };

    // The header block.
    let started = Instant::now();
    let mut buf = BytesMut::with_capacity(4096);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break Ok(end);
        }
        if buf.len() >= MAX_HEAD {
            break Err("a header block over 64 KiB");
        }
        match tokio::time::timeout(config.cgi_timeout, stdout.read_buf(&mut buf)).await {
            Err(_) => {
                crate::error!(
                    "http",
                    "CGI: no headers within --cgi-timeout-ms ({} ms): killing the script",
                    config.cgi_timeout.as_millis()
                );
                child.terminate(config.close_grace).await;
                return http::refuse(
                    config,
                    StatusCode::GATEWAY_TIMEOUT,
                    "the script did not answer in time",
                );
            }
            Ok(Ok(0)) | Ok(Err(_)) => break Err("no blank line after the headers"),
            Ok(Ok(_)) => {}
        }
    };
    let head = match head_end.and_then(|(end, body_start)| {
        let head = parse_head(&buf[..end])?;
        let _ = buf.split_to(body_start);
        Ok(head)
    }) {
        Ok(head) => head,
        Err(why) => {
            crate::error!("http", "CGI: malformed response from the script: {why}");
            child.terminate(config.close_grace).await;
            return http::refuse(
                config,
                StatusCode::BAD_GATEWAY,
                "the script's response was malformed",
            );
        }
    };

    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    let rest = buf.freeze();
    let grace = config.close_grace;
    let timeout = config.cgi_timeout;
    shared.tracker.spawn(
        async move {
            stream_body(&mut child, stdout, rest, tx, timeout).await;
            let exit = child.terminate(grace).await;
            drop::<Option<OwnedSemaphorePermit>>(permit);
            crate::access!(
                "http",
                "CGI done after {:.3}s, {}",
                started.elapsed().as_secs_f64(),
                exit.map_or_else(|| "unknown".to_string(), |e| e.to_string())
            );
        }
        .in_current_span(),
    );

    let mut resp = Response::new(http::ChannelBody(rx).boxed_unsync());
    *resp.status_mut() = head.status;
    let h = resp.headers_mut();
    for (name, value) in head.headers {
        h.append(name, value);
    }
    http::add_headers(h, &config.headers);
    http::add_headers(h, &config.headers_http);
    resp
}

/// The WebSocket environment, with the request's method, body length and type.
fn environment(
    config: &crate::config::Config,
    parts: &hyper::http::request::Parts,
    remote: &Remote,
    script_name: &str,
    id: &str,
) -> cgi_env::Environment {
    let script = ScriptPath {
        script_name: script_name.to_string(),
        path_info: String::new(),
    };
    let mut env = cgi_env::build(config, parts, remote, &script, id);
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    for (key, value) in [
        ("CONTENT_LENGTH", header(hyper::header::CONTENT_LENGTH)),
        ("CONTENT_TYPE", header(hyper::header::CONTENT_TYPE)),
    ] {
        if env.get(key).is_some() {
            env.set(key, &value);
        }
    }
    env
}

/// Copies the rest of the script's output to the body queue until it ends, the client leaves,
/// or the script stays silent too long.
async fn stream_body(
    child: &mut ChildProcess,
    mut stdout: crate::child::ChildStdout,
    first: Bytes,
    tx: mpsc::Sender<Bytes>,
    timeout: std::time::Duration,
) {
    if !first.is_empty() && tx.send(first).await.is_err() {
        return;
    }
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(crate::framing::READ_CHUNK);
        let read = tokio::select! {
            r = tokio::time::timeout(timeout, stdout.read_buf(&mut buf)) => r,
            _ = tx.closed() => {
                crate::trace!("http", "CGI: the client left");
                return;
            }
        };
        match read {
            Err(_) => {
                crate::error!(
                    "http",
                    "CGI: no output for --cgi-timeout-ms ({} ms): killing the script",
                    timeout.as_millis()
                );
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                // Output done: give the script a moment to exit by itself.
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(250), child.wait()).await;
                return;
            }
            Ok(Ok(_)) => {
                if tx.send(buf.split().freeze()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Where the header block ends (before its blank line) and the body starts, accepting `\n`
/// and `\r\n` line endings.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    while let Some(nl) = buf[line_start..].iter().position(|&b| b == b'\n') {
        let line_end = line_start + nl;
        let line = &buf[line_start..line_end];
        if line.is_empty() || line == b"\r" {
            return Some((line_start, line_end + 1));
        }
        line_start = line_end + 1;
    }
    None
}

struct Head {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Parses a CGI header block into a status and response headers (RFC 3875 6.3).
fn parse_head(block: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(block).map_err(|_| "headers that are not UTF-8")?;
    let mut status = None;
    let mut location = false;
    let mut content_type = false;
    let mut headers = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let (name, value) = line
            .split_once(':')
            .ok_or("a header line without a colon")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or("a Status header without a valid code")?;
            status = Some(code);
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "an invalid header name")?;
        let value = HeaderValue::from_str(value).map_err(|_| "an invalid header value")?;
        // The connection's framing is wsd's to decide.
        if matches!(
            name.as_str(),
            "connection" | "transfer-encoding" | "keep-alive" | "upgrade"
        ) {
            continue;
        }
        location |= name == hyper::header::LOCATION;
        content_type |= name == hyper::header::CONTENT_TYPE;
        headers.push((name, value));
    }
    if status.is_none() && !location && !content_type {
        return Err("none of Content-Type, Location or Status");
    }
    let status = status.unwrap_or(if location && !content_type {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(Head { status, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line_with_either_line_ending() {
        assert_eq!(find_head_end(b"A: b\r\n\r\nbody"), Some((6, 8)));
        assert_eq!(find_head_end(b"A: b\n\nbody"), Some((5, 6)));
        assert_eq!(find_head_end(b"A: b\r\n"), None);
    }

    #[test]
    fn status_location_and_content_type_decide_the_status() {
        let h = parse_head(b"Status: 404 Not Found\nContent-Type: text/plain\n").unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        let h = parse_head(b"Location: /elsewhere\n").unwrap();
        assert_eq!(h.status, StatusCode::FOUND);
        let h = parse_head(b"Content-Type: text/html\r\nX-A: 1\r\n").unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers.len(), 2);
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(parse_head(b"this is not a header\n").is_err());
        assert!(parse_head(b"X-Only: 1\n").is_err());
        assert!(parse_head(b"Status: abc\n").is_err());
        assert!(parse_head(b"Bad Name: 1\nContent-Type: x\n").is_err());
    }

    #[test]
    fn paths_are_cleaned_and_cannot_climb_out() {
        let root = std::fs::canonicalize(std::env::temp_dir()).unwrap();
        assert_eq!(resolve(&root, "/"), None);
        assert_eq!(resolve(&root, "/no/such/script.sh"), None);
    }
}
