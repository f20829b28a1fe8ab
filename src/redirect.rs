//! `--redirport`: a plain HTTP listener that answers every request with a 301 to the same
//! host and path on the main port, `https://` with `--ssl` (as websocketd 0.5, which
//! redirects to `http://` without it).
//!
//! Its connections are bounded like the main listener's: they count among the connections
//! without a handshake (`--max-pending`), their headers must arrive within
//! `--header-timeout-ms`, and each carries one request.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::Shared;

/// Accepts on `listener` until shutdown; every request is sent to `main_port`.
pub async fn serve(listener: TcpListener, main_port: u16, shared: Arc<Shared>) {
    let mut last_error: Option<io::ErrorKind> = None;
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                crate::server::accept_failed(&mut last_error, "redirect: ", &e).await;
                continue;
            }
        };
        last_error = None;
        let local = stream.local_addr().ok();
        let slot = crate::server::register_pending(&shared);
        let shared = shared.clone();
        let tracker = shared.tracker.clone();
        tracker.spawn(async move {
            let config = shared.config.clone();
            let service = service_fn(move |req| {
                let resp = answer(&config, &req, local, main_port, remote);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = crate::server::http1_builder(&shared.config)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    crate::debug!("http", "redirect: connection from {}: {e}", remote.ip());
                },
                _ = slot.evicted.cancelled() => {}
                _ = shared.shutdown.cancelled() => {}
            }
        });
    }
}

/// The 301 for one request.
fn answer(
    config: &Config,
    req: &Request<Incoming>,
    local: Option<SocketAddr>,
    main_port: u16,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(host_without_port)
        .unwrap_or_else(|| listening_host(config, local));
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let default_port = if config.tls.is_some() { 443 } else { 80 };
    let port = if main_port == default_port {
        String::new()
    } else {
        format!(":{main_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("{scheme}://{host}{port}{path}");
    crate::access!(
        "http",
        "301 from {} redirected to {location}",
        remote.ip().to_canonical()
    );
    let mut resp = Response::new(Full::new(Bytes::from(format!(
        "301 Moved Permanently: {location}\n"
    ))));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    crate::http::add_headers(h, &config.headers);
    crate::http::add_headers(h, &config.headers_http);
    resp
}

/// The host of a Host header, without its port: a name or IPv4 address, or an IPv6 address
/// in brackets. `None` for anything else, so that a forged header cannot steer the
/// redirect to a different path or scheme.
fn host_without_port(hostport: &str) -> Option<String> {
    let (host, _) = crate::cgi_env::split_host_port(hostport, false)?;
    if hostport.starts_with('[') {
        let ok = host.parse::<std::net::Ipv6Addr>().is_ok();
        return ok.then(|| format!("[{host}]"));
    }
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    ok.then_some(host)
}

/// The host to redirect to when the request names none: the address the client reached, or
/// this machine's name when that is a wildcard.
fn listening_host(config: &Config, local: Option<SocketAddr>) -> String {
    match local.map(|a| a.ip().to_canonical()) {
        Some(ip) if !ip.is_unspecified() && ip.is_ipv6() => format!("[{ip}]"),
        Some(ip) if !ip.is_unspecified() => ip.to_string(),
        _ => config.hostname.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn the_host_header_loses_its_port_and_keeps_ipv6_brackets() {
        assert_eq!(
            host_without_port("example.com:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            host_without_port("example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(host_without_port("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(
            host_without_port("127.0.0.1:1").as_deref(),
            Some("127.0.0.1")
        );
    }

    #[test]
    fn a_forged_host_header_is_not_used() {
        assert_eq!(host_without_port("evil.com/path?"), None);
        assert_eq!(host_without_port("a@b"), None);
        assert_eq!(host_without_port(""), None);
        assert_eq!(host_without_port("[nonsense]:1"), None);
    }
}
