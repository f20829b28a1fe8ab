//! `--sse`: the program's output as Server-Sent Events, for a GET with
//! `Accept: text/event-stream` on a route.
//!
//! Each output line is one event, `id: N` then `data: LINE` (a carriage return inside a line
//! starts another `data:` field, so no line can inject fields). A comment (`: keepalive`) goes
//! out every `--pingms`, or every 15 s without it, so proxies keep the stream open and a
//! client that left is noticed. When the program exits, an `exit` event carries its status
//! (`exit status 0`) and the stream ends; a page calls `EventSource.close()` on it.
//!
//! The program's lifecycle is a WebSocket's: per connection it gets the same environment and,
//! when the client leaves, its stdin is closed and its process group stopped; with
//! `--broadcast` the client is one more subscriber of the route's shared program, resuming
//! from `Last-Event-ID` within the `--replay` window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use crate::broadcast::Subscription;
use crate::child::{ChildProcess, Exit};
use crate::config::Config;
use crate::http::{self, Body, Peer, Program, Shared};
use crate::session::Encoder;

/// Events buffered between the program and the socket; beyond it the program (or, shared,
/// the subscriber's queue) waits.
const EVENT_QUEUE: usize = 16;
/// The keep-alive comment interval without `--pingms`.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long the program may take to exit after closing its stdout.
const EXIT_WAIT: Duration = Duration::from_millis(250);

/// Whether a request asks for an event stream.
pub fn wants_events<B>(req: &Request<B>) -> bool {
    req.method() == hyper::Method::GET
        && req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// Answers an event-stream request: the same checks as an upgrade (`--maxforks`, route,
/// origin), then a 200 whose body the program's output feeds.
pub async fn respond(
    shared: &Arc<Shared>,
    peer: &Peer,
    host: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let config = &shared.config;
    let span = tracing::Span::current();
    let http::Admission {
        permit,
        id,
        remote,
        route,
    } = match http::admit(shared, peer, &req, &span).await {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    if let Err(resp) = http::check_origin(config, &req, host, &span) {
        return *resp;
    }
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let (parts, _body) = req.into_parts();
    let program = match http::start_program(shared, &parts, &remote, &route, &id, last_event_id) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };

    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let feed = Feed {
        tx,
        config: config.clone(),
        shutdown: shared.shutdown.clone(),
        started: Instant::now(),
        events: 0,
        bytes: 0,
    };
    crate::access!("session", "CONNECT (event stream)");
    match program {
        Program::Own(child) => shared
            .tracker
            .spawn(feed.run_own(*child, permit).instrument(span)),
        Program::Shared(sub) => shared.tracker.spawn(feed.run_shared(sub).instrument(span)),
    };

    let mut resp = Response::new(http::ChannelBody(rx).boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    http::add_headers(h, &config.headers);
    http::add_headers(h, &config.headers_http);
    resp
}

/// One event: its id, then a `data:` field per carriage-return-separated part of the line.
fn event(id: u64, text: &str) -> Bytes {
    let mut out = String::with_capacity(text.len() + 24);
    out.push_str("id: ");
    out.push_str(&id.to_string());
    out.push('\n');
    for part in text.split('\r') {
        out.push_str("data: ");
        out.push_str(part);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

fn text_of(msg: &Message) -> &str {
    match msg {
        Message::Text(t) => t.as_str(),
        _ => "",
    }
}

/// How a stream ended.
enum Ended {
    /// The program exited; the `exit` event's data.
    Exit(String),
    ClientGone,
    Shutdown,
    /// A shared program's subscriber fell behind.
    TooSlow,
}

/// The sending end of one event stream.
struct Feed {
    tx: mpsc::Sender<Bytes>,
    config: Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
    started: Instant,
    events: u64,
    bytes: u64,
}

impl Feed {
    fn heartbeat(&self) -> tokio::time::Interval {
        let every = self.config.ping_interval.unwrap_or(HEARTBEAT);
        let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        iv
    }

    /// Sends one chunk, unless the client leaves or the server shuts down meanwhile.
    async fn send(&mut self, chunk: Bytes) -> Result<(), Ended> {
        let len = chunk.len() as u64;
        let is_event = !chunk.starts_with(b":");
        tokio::select! {
            r = self.tx.send(chunk) => r.map_err(|_| Ended::ClientGone)?,
            _ = self.shutdown.cancelled() => return Err(Ended::Shutdown),
        }
        self.bytes += len;
        if is_event {
            crate::metrics::sent(1, len);
        }
        Ok(())
    }

    async fn send_event(&mut self, id: u64, text: &str) -> Result<(), Ended> {
        self.send(event(id, text)).await?;
        self.events += 1;
        Ok(())
    }

    /// A program of its own: its output until it exits or the client leaves.
    async fn run_own(mut self, mut child: ChildProcess, permit: Option<OwnedSemaphorePermit>) {
        let config = self.config.clone();
        let mut out = child
            .stdout
            .take()
            .map(|o| crate::framing::Output::new(o, false, config.max_line_bytes));
        // No client messages: stdin stays open (and unwritten) until the stream ends.
        let stdin = child.stdin.take();
        let (stderr_tx, mut stderr_rx) = mpsc::channel::<String>(16);
        let stderr_task = child.stderr.take().map(|e| {
            let tx = config.pass_stderr.then_some(stderr_tx);
            tokio::spawn(
                crate::session::pump_stderr(e, tx, config.max_line_bytes).in_current_span(),
            )
        });
        let mut encoder = Encoder::new(&config);
        let mut heartbeat = self.heartbeat();
        let mut next_id = 0u64;
        let mut exit: Option<Exit> = None;
        let ended = loop {
            let step: Result<(), Ended> = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => Err(Ended::Shutdown),
                _ = self.tx.closed() => Err(Ended::ClientGone),
                (payloads, eof) = async { out.as_mut().expect("guarded").read().await }, if out.is_some() => {
                    if eof {
                        out = None;
                    }
                    let mut r = Ok(());
                    for p in payloads {
                        next_id += 1;
                        let msg = encoder.message(p);
                        r = self.send_event(next_id, text_of(&msg)).await;
                        if r.is_err() {
                            break;
                        }
                    }
                    r
                }
                Some(json) = stderr_rx.recv() => {
                    next_id += 1;
                    self.send_event(next_id, &json).await
                }
                status = child.wait(), if exit.is_none() => {
                    exit = status.ok();
                    Ok(())
                }
                _ = tokio::time::sleep(EXIT_WAIT), if out.is_none() && exit.is_none() => {
                    // Output closed but the program runs on: end it.
                    exit = child.terminate(config.close_grace).await;
                    Ok(())
                }
                _ = heartbeat.tick() => self.send(Bytes::from_static(b": keepalive\n\n")).await,
            };
            if let Err(end) = step {
                break end;
            }
            if out.is_none() {
                if let Some(e) = exit {
                    child.kill_leftovers();
                    break Ended::Exit(e.to_string());
                }
            }
        };
        drop(stdin);
        let status = match &ended {
            Ended::Exit(status) => status.clone(),
            _ => child
                .terminate(config.close_grace)
                .await
                .map_or_else(|| "unknown".to_string(), |e| e.to_string()),
        };
        if let Some(task) = stderr_task {
            let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
        }
        self.finish(ended).await;
        drop(permit);
        self.log_disconnect(&status);
    }

    /// A subscriber of a shared program: the replay, then the live stream.
    async fn run_shared(mut self, mut sub: Subscription) {
        let mut heartbeat = self.heartbeat();
        let replay: Vec<_> = sub.replay.drain(..).collect();
        let mut ended = None;
        for (id, msg) in replay {
            if let Err(e) = self.send_event(id, text_of(&msg)).await {
                ended = Some(e);
                break;
            }
        }
        let ended = match ended {
            Some(e) => e,
            None => loop {
                let step = tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => Err(Ended::Shutdown),
                    _ = sub.kicked.cancelled() => Err(Ended::TooSlow),
                    _ = self.tx.closed() => Err(Ended::ClientGone),
                    item = sub.rx.recv() => match item {
                        Some((id, msg)) => {
                            let chunk = event(id, text_of(&msg));
                            tokio::select! {
                                r = self.send(chunk) => r.map(|()| self.events += 1),
                                _ = sub.kicked.cancelled() => Err(Ended::TooSlow),
                            }
                        }
                        None => Err(Ended::Exit(match sub.end_frame() {
                            Some(f) if f.code == CloseCode::Normal => "exit status 0".to_string(),
                            Some(f) => f.reason.to_string(),
                            None => "ended".to_string(),
                        })),
                    },
                    _ = heartbeat.tick() => self.send(Bytes::from_static(b": keepalive\n\n")).await,
                };
                if let Err(end) = step {
                    break end;
                }
            },
        };
        if matches!(ended, Ended::TooSlow) {
            crate::access!(
                "session",
                "event stream fell --send-queue messages behind: ending it"
            );
        }
        let status = match &ended {
            Ended::Exit(s) => format!("shared program: {s}"),
            _ => "shared program still running".to_string(),
        };
        self.finish(ended).await;
        drop(sub);
        self.log_disconnect(&status);
    }

    /// Ends the stream: after the program's exit, an `exit` event first.
    async fn finish(&mut self, ended: Ended) {
        if let Ended::Exit(status) = ended {
            let chunk = Bytes::from(format!("event: exit\ndata: {status}\n\n"));
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tx.send(chunk)).await;
        }
    }

    fn log_disconnect(&self, program: &str) {
        crate::access!(
            "session",
            "DISCONNECT (event stream) after {:.3}s, {program}, out {} events / {} bytes",
            self.started.elapsed().as_secs_f64(),
            self.events,
            self.bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_has_its_id_and_one_data_field_per_carriage_return_part() {
        assert_eq!(event(7, "hello"), Bytes::from("id: 7\ndata: hello\n\n"));
        assert_eq!(
            event(8, "a\revent: x"),
            Bytes::from("id: 8\ndata: a\ndata: event: x\n\n")
        );
        assert_eq!(event(9, ""), Bytes::from("id: 9\ndata: \n\n"));
    }
}
