//! Request routing: WebSocket upgrades become sessions, everything else gets a plain HTTP
//! answer.
//!
//! An upgrade passes these checks in this order, each with websocketd 0.5's status: a free
//! `--maxforks` slot (429), a program for the path (404, or 403 when not executable), a valid
//! handshake (405 for a method other than GET, 426 for a version other than 13, 400 for a bad
//! key), the Origin (403). The child is started before the 101 answer, so a program that
//! cannot start is an HTTP 500 (503 when processes or descriptors have run out) rather than a
//! WebSocket that opens and dies.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use tracing::Instrument;

use crate::broadcast::{Hubs, SubscribeError, Subscription};
use crate::cgi_env::{self, Remote};
use crate::child::ChildProcess;
use crate::config::{Config, ExtraHeader};
use crate::route::{self, RouteError};
use crate::session::{self, Bridge, Session, SharedSession};

/// tungstenite's read buffer per connection (its default, 128 KiB, would dominate the memory
/// of an idle connection). tungstenite zero-fills it before each read, so all of it stays
/// resident: one page. A larger message is still read whole, a page per read.
const WS_READ_BUFFER: usize = 4 * 1024;
/// tungstenite writes its buffer out once it holds this much.
const WS_WRITE_BUFFER: usize = 64 * 1024;

/// What every connection shares.
pub struct Shared {
    pub config: Arc<Config>,
    /// Connections that have not finished a handshake (`--max-pending`).
    pub pending: Arc<crate::admission::Pending>,
    /// The descriptor held back to answer 503 when the process runs out.
    pub reserve: Arc<crate::admission::Reserve>,
    /// `--broadcast`: the shared programs.
    pub hubs: Arc<Hubs>,
    pub forks: Option<Arc<Semaphore>>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    last_id: AtomicU64,
}

impl Shared {
    pub fn new(config: Arc<Config>, shutdown: CancellationToken, tracker: TaskTracker) -> Shared {
        Shared {
            pending: crate::admission::Pending::new(config.max_pending),
            reserve: crate::admission::Reserve::new(),
            hubs: Arc::new(Hubs::new(config.clone(), shutdown.clone(), tracker.clone())),
            forks: config.max_forks.map(|n| Arc::new(Semaphore::new(n))),
            config,
            shutdown,
            tracker,
            last_id: AtomicU64::new(0),
        }
    }

    /// A unique id per connection: nanoseconds since the epoch as websocketd, made strictly
    /// increasing so that two connections in the same nanosecond still differ.
    fn next_id(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut prev = self.last_id.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.last_id.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next.to_string(),
                Err(actual) => prev = actual,
            }
        }
    }
}

/// A client's address as the log names it: its IP, or "unix socket".
pub(crate) fn client_ip(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "unix socket".to_string(), |a| a.ip().to_string())
}

/// The client end of one HTTP connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address; `None` on the Unix socket.
    pub addr: Option<std::net::SocketAddr>,
    /// The connection's socket, for [`crate::session`]'s hang-up check while it is not reading.
    /// Valid while the connection lives, which the session owns.
    pub fd: std::os::fd::RawFd,
}

/// A response body: a whole one, an event stream, a file, or a CGI script's output.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A streamed body: what arrives on the channel, ending when its sender is dropped. The
/// sender sees the client leave through `closed()`, as hyper drops the body.
pub(crate) struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A body of these bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Answers one request.
pub async fn handle(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let url = tell_url(
        &shared.config,
        &host,
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
    );
    let span = tracing::error_span!(target: "wsd", "request", url = %url, id = Empty, remote = Empty, command = Empty, origin = Empty, pid = Empty);
    // hyper bounds the buffer it reads the head into near the limit; this makes it exact.
    let head_len = head_size(&req);
    if head_len > shared.config.max_header_bytes {
        span.in_scope(|| {
            let remote = client_ip(peer.addr);
            crate::access!(
                "http",
                "431: request headers from {remote} over --max-header-bytes ({head_len} bytes)"
            )
        });
        return Ok(refuse(
            &shared.config,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        ));
    }
    crate::proxy::annotate(&shared.config.trusted_proxies, peer.addr, &mut req);
    let response = if is_upgrade(&req) {
        let started = std::time::Instant::now();
        let resp = upgrade(&shared, &peer, &host, req).instrument(span).await;
        crate::metrics::handshake(started, resp.status());
        resp
    } else if shared.config.sse && crate::sse::wants_events(&req) {
        crate::sse::respond(&shared, &peer, &host, req)
            .instrument(span)
            .await
    } else if shared.config.dev_console {
        span.in_scope(|| crate::devconsole::page(&shared.config, &url.replacen("http", "ws", 1)))
    } else if let Some(script) = shared
        .config
        .cgi_dir
        .as_deref()
        .and_then(|dir| crate::cgi::resolve(dir, req.uri().path()))
    {
        crate::cgi::serve(&shared, &peer, script, req)
            .instrument(span)
            .await
    } else if let Some(dir) = shared.config.static_dir.as_deref() {
        serve_static(&shared.config, dir, req)
            .instrument(span)
            .await
    } else {
        span.in_scope(|| plain(&shared, &req, &url))
    };
    Ok(response)
}

/// The size of a request's head as sent: request line, header lines and the empty line.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + "HTTP/1.1".len() + 4;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

/// websocketd's TellURL of a request: a host starting with ':' gets the machine's name, and
/// with --ssl the scheme is https.
fn tell_url(config: &Config, host: &str, path: &str) -> String {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if host.starts_with(':') {
        format!("{scheme}://{}{host}{path}", config.hostname)
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// A plain HTTP request to a WebSocket server: 426, or 404 where `--dir` has no such program.
fn plain(shared: &Shared, req: &Request<Incoming>, url: &str) -> Response<Body> {
    let config = &shared.config;
    // With --cgidir, a path no script answers is the HTTP side's 404 (as websocketd), not a
    // hint to upgrade.
    let http_side = config.cgi_dir.is_some();
    match route::resolve(config, req.uri().path()) {
        Ok(_) if !http_side => {
            crate::access!("http", "426 UPGRADE REQUIRED (not a WebSocket request)");
            let ws_url = url.replacen("http", "ws", 1);
            let mut resp = text_response(
                StatusCode::UPGRADE_REQUIRED,
                &format!("426 Upgrade Required: {ws_url} is a WebSocket endpoint; connect with a WebSocket client.\n"),
                config,
                &config.headers_http,
            );
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            resp
        }
        found => {
            match found {
                Err(e) => crate::access!("http", "NOT FOUND: {e}"),
                Ok(_) => crate::access!("http", "NOT FOUND: no CGI script for this path"),
            }
            text_response(
                StatusCode::NOT_FOUND,
                "404 page not found\n",
                config,
                &config.headers_http,
            )
        }
    }
}

/// A short text answer with the configured extra headers (`--header` and `extra`).
/// `--staticdir`: the file, or 404 (also for a path that leads outside the directory).
async fn serve_static(
    config: &Config,
    dir: &std::path::Path,
    req: Request<Incoming>,
) -> Response<Body> {
    let mut resp = match crate::static_files::serve(dir, req).await {
        Some(resp) if resp.status() != StatusCode::NOT_FOUND => resp,
        _ => {
            let mut resp = Response::new(full("404 page not found\n"));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
    };
    crate::access!("http", "STATIC {}", resp.status().as_u16());
    let h = resp.headers_mut();
    if !h.contains_key(header::X_CONTENT_TYPE_OPTIONS) {
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    add_headers(h, &config.headers);
    add_headers(h, &config.headers_http);
    resp
}

fn text_response(
    status: StatusCode,
    body: &str,
    config: &Config,
    extra: &[ExtraHeader],
) -> Response<Body> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    add_headers(h, &config.headers);
    add_headers(h, extra);
    resp
}

pub(crate) fn add_headers(h: &mut hyper::HeaderMap, extra: &[ExtraHeader]) {
    for (name, value) in extra {
        h.append(name.clone(), value.clone());
    }
}

/// A refused upgrade: logged once, answered with `status`.
pub(crate) fn refuse(config: &Config, status: StatusCode, why: &str) -> Response<Body> {
    crate::metrics::rejected_status(status);
    let reason = status.canonical_reason().unwrap_or("");
    text_response(
        status,
        &format!("{} {reason}\n{why}\n", status.as_u16()),
        config,
        &config.headers_http,
    )
}

async fn upgrade(
    shared: &Arc<Shared>,
    peer: &Peer,
    host: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let config = &shared.config;
    let span = tracing::Span::current();
    let Admission {
        permit,
        id,
        remote,
        route,
    } = match admit(shared, peer, &req, &span).await {
        Ok(a) => a,
        Err(resp) => return *resp,
    };

    if req.method() != hyper::Method::GET {
        crate::access!(
            "session",
            "Unable to Upgrade: method {} is not GET",
            req.method()
        );
        let mut resp = refuse(
            config,
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket handshake must be a GET request",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    if !version_ok {
        crate::access!(
            "session",
            "Unable to Upgrade: unsupported Sec-WebSocket-Version"
        );
        let mut resp = refuse(
            config,
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version: this server speaks version 13",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| valid_key(k.as_bytes()))
        .cloned()
    else {
        crate::access!(
            "session",
            "Unable to Upgrade: missing or malformed Sec-WebSocket-Key"
        );
        return refuse(
            config,
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
        );
    };
    if let Err(resp) = check_origin(config, &req, host, &span) {
        return *resp;
    }

    let upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let program = match start_program(shared, &parts, &remote, &route, &id, None) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let bridge = match program {
        Program::Own(child) => Bridge::Own(Box::new(Session {
            config: config.clone(),
            child: *child,
            shutdown: shared.shutdown.clone(),
            permit,
            socket_fd: peer.fd,
            metrics: crate::metrics::SessionMetrics::open(&route.script.script_name),
        })),
        Program::Shared(subscription) => Bridge::Shared(SharedSession {
            config: config.clone(),
            subscription,
            shutdown: shared.shutdown.clone(),
            socket_fd: peer.fd,
            metrics: crate::metrics::SessionMetrics::open(&route.script.script_name),
        }),
    };

    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(config.max_message)
        // Without a limit, still refuse a frame length with its top bit set (1002), rather
        // than waiting for 2^63 bytes.
        .max_frame_size(Some(config.max_message.unwrap_or(i64::MAX as usize)));
    session::spawn_after_upgrade(&shared.tracker, upgrade, bridge, ws_config, span.clone());

    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    add_headers(h, &config.headers);
    add_headers(h, &config.headers_ws);
    resp
}

/// `--broadcast --linger-ms=-1` with COMMAND: starts the shared program with the server, with
/// the environment of a request for `/` that names no client.
pub fn start_at_boot(shared: &Arc<Shared>) {
    let config = &shared.config;
    if !config.broadcast
        || config.linger != crate::config::Linger::Forever
        || !matches!(config.program, crate::config::Program::Command { .. })
    {
        return;
    }
    let Ok(route) = route::resolve(config, "/") else {
        return;
    };
    let (parts, ()) = Request::get("/")
        .body(())
        .expect("a GET for / is a valid request")
        .into_parts();
    let remote = Remote {
        addr: String::new(),
        host: String::new(),
        port: String::new(),
        https: false,
    };
    let env = cgi_env::build(config, &parts, &remote, &route.script, &shared.next_id());
    let permit = take_fork(shared).ok().flatten();
    if let Err(e) = shared
        .hubs
        .start_at_boot(&route.program, &route.args, env, permit)
    {
        crate::error!(
            "process",
            "Could not launch process {} ({e}); it will be started with the first client",
            route.program.display()
        );
    }
}

/// A refusal: the response to send instead (boxed: it is large, and the rare path).
pub(crate) type Refused = Box<Response<Body>>;

/// What a request for a program has been given by [`admit`].
pub(crate) struct Admission {
    /// The `--maxforks` slot (per connection; `None` without a limit or with `--broadcast`).
    pub permit: Option<OwnedSemaphorePermit>,
    pub id: String,
    pub remote: Remote,
    pub route: route::Route,
}

/// The checks every request for a program (an upgrade or an event stream) passes first, in
/// websocketd's order: a fork slot, the client's identity, the route. Per connection the fork
/// slot comes first; a shared program takes one only when it has to be started.
pub(crate) async fn admit<B>(
    shared: &Shared,
    peer: &Peer,
    req: &Request<B>,
    span: &tracing::Span,
) -> Result<Admission, Refused> {
    let config = &shared.config;
    let permit = if config.broadcast {
        None
    } else {
        take_fork(shared)?
    };
    let (id, remote) = identify(shared, peer, req, span).await;
    let route = resolve_route(config, req.uri().path(), span)?;
    Ok(Admission {
        permit,
        id,
        remote,
        route,
    })
}

/// A `--maxforks` slot, or the 429 answer.
pub(crate) fn take_fork(shared: &Shared) -> Result<Option<OwnedSemaphorePermit>, Refused> {
    let Some(forks) = &shared.forks else {
        return Ok(None);
    };
    match forks.clone().try_acquire_owned() {
        Ok(p) => Ok(Some(p)),
        Err(_) => {
            crate::error!(
                "http",
                "Max of possible forks already active, upgrade rejected"
            );
            Err(Box::new(refuse(
                &shared.config,
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections: the server's --maxforks limit is reached",
            )))
        }
    }
}

/// The connection's id and the client's address, recorded in the span.
pub(crate) async fn identify<B>(
    shared: &Shared,
    peer: &Peer,
    req: &Request<B>,
    span: &tracing::Span,
) -> (String, Remote) {
    let id = shared.next_id();
    span.record("id", id.as_str());
    let mut remote = match peer.addr {
        Some(addr) => {
            remote_info(
                crate::proxy::client(req, addr),
                shared.config.reverse_lookup,
            )
            .await
        }
        None => Remote::unix(),
    };
    remote.https = crate::proxy::https(req);
    span.record("remote", remote.host.as_str());
    (id, remote)
}

/// The program for a path, or the 404/403 answer.
pub(crate) fn resolve_route(
    config: &Config,
    path: &str,
    span: &tracing::Span,
) -> Result<route::Route, Refused> {
    match route::resolve(config, path) {
        Ok(r) => {
            span.record("command", r.program.to_string_lossy().as_ref());
            Ok(r)
        }
        Err(RouteError::NotFound) => {
            crate::access!("session", "NOT FOUND: script not found");
            Err(Box::new(refuse(
                config,
                StatusCode::NOT_FOUND,
                "no program for this path",
            )))
        }
        Err(RouteError::NotExecutable) => {
            crate::error!(
                "session",
                "FORBIDDEN: the script for this path is not executable"
            );
            Err(Box::new(refuse(
                config,
                StatusCode::FORBIDDEN,
                "the program for this path is not executable",
            )))
        }
    }
}

/// `--origin` / `--sameorigin`, or the 403 answer.
pub(crate) fn check_origin<B>(
    config: &Config,
    req: &Request<B>,
    host: &str,
    span: &tracing::Span,
) -> Result<(), Refused> {
    let origin_header = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let origin = crate::origin::effective_origin(origin_header, config).to_string();
    span.record("origin", origin.as_str());
    let host = crate::proxy::origin_host(req, host);
    let https = config.tls.is_some() || crate::proxy::https(req);
    if let Err(refused) = crate::origin::check(&origin, host, https, config) {
        crate::access!("session", "{}", refused.0);
        return Err(Box::new(refuse(
            config,
            StatusCode::FORBIDDEN,
            "origin not allowed",
        )));
    }
    Ok(())
}

/// The program a connection talks to.
pub(crate) enum Program {
    Own(Box<ChildProcess>),
    Shared(Subscription),
}

/// Starts the connection's program, or joins its route's shared one with `--broadcast`.
/// `permit` is the fork slot taken already (per connection); a shared program takes its own.
pub(crate) fn start_program(
    shared: &Arc<Shared>,
    parts: &hyper::http::request::Parts,
    remote: &Remote,
    route: &route::Route,
    id: &str,
    last_event_id: Option<u64>,
) -> Result<Program, Refused> {
    let config = &shared.config;
    let span = tracing::Span::current();
    let env = || cgi_env::build(config, parts, remote, &route.script, id);
    let started = if config.broadcast {
        match shared.hubs.subscribe(
            &route.program,
            &route.args,
            env,
            || take_fork(shared).ok(),
            last_event_id,
        ) {
            Ok(sub) => {
                span.record("pid", sub.pid().to_string().as_str());
                return Ok(Program::Shared(sub));
            }
            Err(SubscribeError::NoFork) => {
                return Err(Box::new(refuse(
                    config,
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections: the server's --maxforks limit is reached",
                )))
            }
            Err(SubscribeError::Spawn(e)) => Err(e),
        }
    } else {
        ChildProcess::spawn(&route.program, &route.args, env()).map(|c| Program::Own(Box::new(c)))
    };
    match started {
        Ok(program) => {
            if let Program::Own(child) = &program {
                span.record("pid", child.pid().to_string().as_str());
            }
            Ok(program)
        }
        Err(e) if crate::admission::is_exhaustion(&e) => {
            crate::error!(
                "process",
                "Could not launch process {} ({e}): answering 503",
                route.program.display()
            );
            let mut resp = refuse(
                config,
                StatusCode::SERVICE_UNAVAILABLE,
                "the server cannot start another program right now; retry soon",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(Box::new(resp))
        }
        Err(e) => {
            crate::error!(
                "process",
                "Could not launch process {} ({e})",
                route.program.display()
            );
            Err(Box::new(refuse(
                config,
                StatusCode::INTERNAL_SERVER_ERROR,
                "the program could not be started",
            )))
        }
    }
}

/// A Sec-WebSocket-Key must be base64 for exactly 16 bytes: 22 characters and "==".
fn valid_key(key: &[u8]) -> bool {
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key[..22].iter().all(b64) && &key[22..] == b"==" && {
        // The last character before the padding carries only 2 bits: its low 4 bits are zero.
        let last = key[21];
        let v = match last {
            b'A'..=b'Z' => last - b'A',
            b'a'..=b'z' => last - b'a' + 26,
            b'0'..=b'9' => last - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        v & 0x0F == 0
    }
}

async fn remote_info(
    (addr, port): (std::net::IpAddr, Option<u16>),
    reverse_lookup: bool,
) -> Remote {
    let ip = addr.to_canonical().to_string();
    let host = if reverse_lookup {
        let ip_addr = addr.to_canonical();
        tokio::task::spawn_blocking(move || reverse_dns(ip_addr))
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| ip.clone())
    } else {
        ip.clone()
    };
    Remote {
        addr: ip,
        host,
        port: port.map_or_else(String::new, |p| p.to_string()),
        https: false,
    }
}

/// The host name for an address, by the system resolver (`--reverselookup`).
fn reverse_dns(ip: std::net::IpAddr) -> Option<String> {
    use std::mem::{size_of, zeroed};
    // SAFETY: sockaddr structures are plain data, zeroed and then filled in; getnameinfo
    // writes at most `host.len()` bytes into `host` and NUL-terminates it.
    unsafe {
        let mut storage: libc::sockaddr_storage = zeroed();
        let len = match ip {
            std::net::IpAddr::V4(v4) => {
                let sin = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                size_of::<libc::sockaddr_in>()
            }
            std::net::IpAddr::V6(v6) => {
                let sin6 = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_addr.s6_addr = v6.octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        let mut host = [0 as libc::c_char; 1025];
        let rc = libc::getnameinfo(
            &storage as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        );
        if rc != 0 {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(host.as_ptr())
                .to_string_lossy()
                .into_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key(b"short"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25j!Q=="));
    }
}
