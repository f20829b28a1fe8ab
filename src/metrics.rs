//! `--metrics ADDR:PORT`: counters for Prometheus, served on a listener of their own.
//!
//! The metrics live in one process-wide registry, counted and served only when `--metrics` is
//! given (without it, each hook below is a load and a branch). The rest of wsd reports through
//! the one-line functions and guards below, so that the code that does the work says what it
//! counts and nothing more.
//!
//! | metric | what |
//! |---|---|
//! | `wsd_http_connections_total` | connections accepted (TCP and Unix socket) |
//! | `wsd_connections_open{route}` | WebSocket connections open now |
//! | `wsd_connections_total{route}` | WebSocket connections upgraded |
//! | `wsd_connections_closed_total{route,code}` | WebSocket connections ended, by close code (1006: none) |
//! | `wsd_connections_rejected_total{reason}` | upgrades and event streams refused, by HTTP status, or closed unanswered (`header_timeout`, `evicted`) |
//! | `wsd_children_running`, `wsd_children_spawned_total`, `wsd_spawn_failures_total` | programs |
//! | `wsd_messages_received_total`, `wsd_received_bytes_total` | client messages (and their bytes) |
//! | `wsd_messages_sent_total`, `wsd_sent_bytes_total` | messages (and event-stream events) sent to clients |
//! | `wsd_handshake_duration_seconds` | from the upgrade request to the 101 answer, program start included |
//! | `wsd_session_duration_seconds` | from the 101 answer to the end of the connection |
//!
//! `route` is the program's URL path (`/` for COMMAND; with `--dir`, the script's path), so its
//! values are bounded by the programs that exist.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Time a scraper gets to send its request.
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes take milliseconds (most of it starting the program): 0.5 ms to 2.5 s.
const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Sessions last from a moment to days: 0.1 s to a day.
const SESSION_BUCKETS: [f64; 13] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

struct Metrics {
    registry: Registry,
    http_connections: Counter,
    open: Family<RouteLabel, Gauge>,
    opened: Family<RouteLabel, Counter>,
    closed: Family<CloseLabels, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    children_running: Gauge,
    children_spawned: Counter,
    spawn_failures: Counter,
    messages_received: Counter,
    bytes_received: Counter,
    messages_sent: Counter,
    bytes_sent: Counter,
    handshake: Histogram,
    session: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("wsd");
    let m = Metrics {
        registry: Registry::default(),
        http_connections: Counter::default(),
        open: Family::default(),
        opened: Family::default(),
        closed: Family::default(),
        rejected: Family::default(),
        children_running: Gauge::default(),
        children_spawned: Counter::default(),
        spawn_failures: Counter::default(),
        messages_received: Counter::default(),
        bytes_received: Counter::default(),
        messages_sent: Counter::default(),
        bytes_sent: Counter::default(),
        handshake: Histogram::new(HANDSHAKE_BUCKETS),
        session: Histogram::new(SESSION_BUCKETS),
    };
    let r = &mut registry;
    r.register(
        "http_connections",
        "Connections accepted (TCP and Unix socket)",
        m.http_connections.clone(),
    );
    r.register(
        "connections_open",
        "WebSocket connections open, by route",
        m.open.clone(),
    );
    r.register(
        "connections",
        "WebSocket connections upgraded, by route",
        m.opened.clone(),
    );
    r.register(
        "connections_closed",
        "WebSocket connections ended, by route and close code (1006: no close frame)",
        m.closed.clone(),
    );
    r.register(
        "connections_rejected",
        "Upgrades and event streams refused, by HTTP status; or connections closed unanswered (header_timeout, evicted)",
        m.rejected.clone(),
    );
    r.register(
        "children_running",
        "Programs running",
        m.children_running.clone(),
    );
    r.register(
        "children_spawned",
        "Programs started",
        m.children_spawned.clone(),
    );
    r.register(
        "spawn_failures",
        "Programs that could not be started",
        m.spawn_failures.clone(),
    );
    r.register(
        "messages_received",
        "Messages received from clients",
        m.messages_received.clone(),
    );
    r.register(
        "received_bytes",
        "Bytes of messages received from clients",
        m.bytes_received.clone(),
    );
    r.register(
        "messages_sent",
        "Messages (and event-stream events) sent to clients",
        m.messages_sent.clone(),
    );
    r.register(
        "sent_bytes",
        "Bytes of messages sent to clients",
        m.bytes_sent.clone(),
    );
    r.register(
        "handshake_duration_seconds",
        "Time from an upgrade request to its 101 answer, program start included",
        m.handshake.clone(),
    );
    r.register(
        "session_duration_seconds",
        "Time from the 101 answer to the end of a WebSocket connection",
        m.session.clone(),
    );
    Metrics { registry, ..m }
});

/// Whether anything is counted: only with `--metrics`, so that without it the hooks below
/// cost a load and a branch, not a shared counter or a label lookup per connection.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Starts counting; called once `--metrics` has its listener, before any connection.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A connection was accepted.
pub fn http_connection() {
    if enabled() {
        METRICS.http_connections.inc();
    }
}

/// A connection was refused: an HTTP status (`"429"`), or `header_timeout` or `evicted`.
pub fn rejected(reason: &'static str) {
    if !enabled() {
        return;
    }
    METRICS
        .rejected
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// [`rejected`] with an HTTP status.
pub fn rejected_status(status: StatusCode) {
    // Label values must be 'static; the statuses wsd refuses with are few.
    let reason = match status.as_u16() {
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        426 => "426",
        429 => "429",
        431 => "431",
        500 => "500",
        503 => "503",
        _ => "other",
    };
    rejected(reason);
}

/// An upgrade request that began at `started` was answered with `status`.
pub fn handshake(started: Instant, status: StatusCode) {
    if enabled() && status == StatusCode::SWITCHING_PROTOCOLS {
        METRICS.handshake.observe(started.elapsed().as_secs_f64());
    }
}

/// Messages written to a client.
pub fn sent(messages: u64, bytes: u64) {
    if enabled() {
        METRICS.messages_sent.inc_by(messages);
        METRICS.bytes_sent.inc_by(bytes);
    }
}

/// A message from a client.
pub fn received(bytes: u64) {
    if enabled() {
        METRICS.messages_received.inc();
        METRICS.bytes_received.inc_by(bytes);
    }
}

/// A program could not be started.
pub fn spawn_failed() {
    if enabled() {
        METRICS.spawn_failures.inc();
    }
}

/// A running program: counted from its start until this is dropped (when it is reaped).
pub struct ChildRunning(bool);

impl ChildRunning {
    pub fn start() -> ChildRunning {
        let counted = enabled();
        if counted {
            METRICS.children_spawned.inc();
            METRICS.children_running.inc();
        }
        ChildRunning(counted)
    }
}

impl Drop for ChildRunning {
    fn drop(&mut self) {
        if self.0 {
            METRICS.children_running.dec();
        }
    }
}

/// One WebSocket connection on `route`, open until this is dropped; [`SessionMetrics::close`]
/// records its close code (without it, 1006). Without `--metrics` it holds and does nothing.
pub struct SessionMetrics(Option<Session>);

struct Session {
    route: String,
    started: Instant,
    code: u16,
}

impl SessionMetrics {
    pub fn open(route: &str) -> SessionMetrics {
        if !enabled() {
            return SessionMetrics(None);
        }
        let label = RouteLabel {
            route: route.to_string(),
        };
        METRICS.opened.get_or_create(&label).inc();
        METRICS.open.get_or_create(&label).inc();
        SessionMetrics(Some(Session {
            route: label.route,
            started: Instant::now(),
            code: 1006,
        }))
    }

    /// The connection ended with a close frame of `code` (0: without one).
    pub fn close(mut self, code: u16) {
        if let Some(session) = &mut self.0 {
            if code != 0 {
                session.code = code;
            }
        }
    }
}

impl Drop for SessionMetrics {
    fn drop(&mut self) {
        let Some(session) = self.0.take() else {
            return;
        };
        METRICS
            .session
            .observe(session.started.elapsed().as_secs_f64());
        METRICS
            .closed
            .get_or_create(&CloseLabels {
                route: session.route.clone(),
                code: session.code.to_string(),
            })
            .inc();
        METRICS
            .open
            .get_or_create(&RouteLabel {
                route: session.route,
            })
            .dec();
    }
}

/// Every metric in Prometheus's text format (version 0.0.4).
pub fn render() -> String {
    let mut out = String::new();
    if let Err(e) =
        prometheus_client::encoding::prometheus_text::encode(&mut out, &METRICS.registry)
    {
        crate::error!("metrics", "cannot encode the metrics: {e}");
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    crate::debug!("metrics", "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service_fn(answer));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET | &hyper::Method::HEAD, "/metrics") => (
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            render(),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "405 Method Not Allowed\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found: the metrics are at /metrics\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_counted_open_then_closed_with_its_code() {
        enable();
        let s = SessionMetrics::open("/unit-test-route");
        let text = render();
        assert!(
            text.contains(r#"wsd_connections_open{route="/unit-test-route"} 1"#),
            "{text}"
        );
        s.close(1000);
        let text = render();
        assert!(
            text.contains(r#"wsd_connections_open{route="/unit-test-route"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"wsd_connections_closed_total{route="/unit-test-route",code="1000"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE wsd_session_duration_seconds histogram"));
    }
}
