//! Listeners, the accept loops and graceful shutdown.
//!
//! Cancellation is one token for the whole server: SIGINT or SIGTERM cancels it, the accept
//! loops stop, every session sends 1001 and runs its child's teardown, and `run` returns once
//! the task tracker is empty (or after a bound, should a child refuse to be reaped).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Evicted, PendingSlot};
use crate::config::{Config, Program, TcpAddr};
use crate::http::{self, Peer, Shared};

/// How long the accept that uses the reserve descriptor may take.
const RESERVE_ACCEPT: Duration = Duration::from_millis(50);
/// Pause after a failed accept before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A start-up failure: the message for the log and the exit status (3, as websocketd).
#[derive(Debug, thiserror::Error)]
#[error("Can't start server: {0}")]
pub struct StartError(String);

enum Listener {
    Tcp(TcpListener, String),
    Unix(UnixListener, std::path::PathBuf),
}

/// Binds every listener, serves until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), StartError> {
    // Installed first, so that a signal during start-up is a graceful shutdown too.
    let signals = Signals::install();
    let reloader = crate::tls::Reloader::install(config.tls.clone());
    crate::admission::raise_fd_limit();
    let config = Arc::new(config);
    let mut listeners = adopt_inherited()?;
    if listeners.is_empty() {
        for addr in &config.tcp {
            listeners.push(Listener::Tcp(bind_tcp(addr).await?, addr.host.clone()));
        }
    }
    if let Some(path) = &config.unix_socket {
        listeners.push(Listener::Unix(bind_unix(path).await?, path.clone()));
    }
    let metrics = match &config.metrics {
        Some(addr) => {
            let listener = bind_tcp(addr).await?;
            crate::metrics::enable();
            Some(listener)
        }
        None => None,
    };
    let redirects = bind_redirects(&config, &listeners).await?;

    match &config.program {
        Program::Command { path, args } => {
            let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
            crate::info!(
                "server",
                "Serving using application   : {} {}",
                path.display(),
                args.join(" ")
            );
        }
        Program::Dir(dir) => {
            crate::info!("server", "Serving from directory      : {}", dir.display())
        }
        Program::None => {}
    }
    if let Some(dir) = &config.static_dir {
        crate::info!("server", "Serving static content from : {}", dir.display());
    }
    if let Some(dir) = &config.cgi_dir {
        crate::info!("server", "Serving CGI scripts from    : {}", dir.display());
    }

    if let Some(tls) = &config.tls {
        tls.log_start();
    }

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared::new(
        config.clone(),
        shutdown.clone(),
        tracker.clone(),
    ));
    http::start_at_boot(&shared);
    tokio::spawn(reloader.run(shutdown.clone()));
    let ws = if config.tls.is_some() { "wss" } else { "ws" };
    let mut accept_loops = Vec::new();
    for listener in listeners {
        match &listener {
            Listener::Tcp(l, shown) => {
                let url = match l.local_addr() {
                    Ok(a) if shown.is_empty() => {
                        format!("{ws}://{}:{}/", config.hostname, a.port())
                    }
                    Ok(a) => format!("{ws}://{}/", SocketAddr::new(a.ip(), a.port())),
                    Err(_) => format!("{ws}://{shown}/"),
                };
                crate::info!("server", "Starting WebSocket server   : {url}");
            }
            Listener::Unix(_, path) => {
                crate::info!(
                    "server",
                    "Starting WebSocket server   : unix socket at {}",
                    path.display()
                )
            }
        }
        accept_loops.push(tokio::spawn(accept_loop(listener, shared.clone())));
    }
    for (listener, main_port) in redirects {
        if let Ok(a) = listener.local_addr() {
            crate::info!("server", "Starting redirect server    : http://{a}/");
        }
        let serve = crate::redirect::serve(listener, main_port, shared.clone());
        accept_loops.push(tokio::spawn(serve));
    }

    if let Some(l) = metrics {
        if let Ok(a) = l.local_addr() {
            crate::info!("server", "Serving metrics at          : http://{a}/metrics");
        }
        accept_loops.push(tokio::spawn(crate::metrics::serve(l, shutdown.clone())));
    }
    let watchdog_stop = CancellationToken::new();
    let watchdog = crate::systemd::ready("Serving", watchdog_stop.clone());

    signals.wait().await;
    crate::systemd::stopping();
    crate::info!("server", "shutting down");
    shutdown.cancel();
    for l in accept_loops {
        let _ = l.await;
    }
    tracker.close();
    // A teardown takes at most the stdin flush and the signal schedule, each step plus --closems.
    let bound = Duration::from_secs(3) + config.close_grace * 4;
    if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
        crate::error!(
            "server",
            "some connections did not finish within {bound:?}; exiting anyway"
        );
    }
    if let Some(path) = &config.unix_socket {
        let _ = std::fs::remove_file(path);
    }
    watchdog_stop.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    Ok(())
}

/// The sockets systemd passed (socket activation), which replace `--port` and `--address`.
fn adopt_inherited() -> Result<Vec<Listener>, StartError> {
    let mut listeners = Vec::new();
    for inherited in crate::systemd::take_listeners().map_err(StartError)? {
        let adopted = match inherited {
            crate::systemd::Inherited::Tcp(l) => {
                let shown = l
                    .local_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string());
                TcpListener::from_std(l).map(|l| Listener::Tcp(l, shown))
            }
            crate::systemd::Inherited::Unix(l) => {
                let path = l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                    .unwrap_or_else(|| "(unnamed)".into());
                UnixListener::from_std(l).map(|l| Listener::Unix(l, path))
            }
        };
        listeners.push(
            adopted.map_err(|e| StartError(format!("cannot use a socket systemd passed: {e}")))?,
        );
    }
    Ok(listeners)
}

/// SIGINT and SIGTERM, the two signals that shut wsd down.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn install() -> Signals {
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Signals(Some((int, term))),
            _ => {
                crate::error!(
                    "server",
                    "cannot install signal handlers; stop with SIGKILL"
                );
                Signals(None)
            }
        }
    }

    async fn wait(self) {
        let Some((mut int, mut term)) = self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Go's wording for a failed listen, which websocketd's users and tests look for
/// ("listen tcp 127.0.0.1:80: bind: address already in use").
fn listen_error(network: &str, addr: &str, e: &io::Error) -> StartError {
    let mut lower = crate::log::os_error_text(e);
    if let Some(first) = lower.get(..1) {
        lower = first.to_lowercase() + &lower[1..];
    }
    StartError(format!("listen {network} {addr}: bind: {lower}"))
}

/// Binds one TCP address (`--port`/`--address`, `--metrics`, `--redirport`).
async fn bind_tcp(addr: &TcpAddr) -> Result<TcpListener, StartError> {
    let shown = if addr.host.contains(':') {
        format!("[{}]:{}", addr.host, addr.port)
    } else {
        format!("{}:{}", addr.host, addr.port)
    };
    let listener = if addr.host.is_empty() {
        // All interfaces: one dual-stack IPv6 socket, or IPv4 where IPv6 is unavailable.
        match TcpListener::bind(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            addr.port,
        ))
        .await
        {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(listen_error("tcp", &shown, &e))
            }
            Err(_) => TcpListener::bind(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                addr.port,
            ))
            .await
            .map_err(|e| listen_error("tcp", &shown, &e))?,
        }
    } else if let Ok(ip) = addr.host.parse::<IpAddr>() {
        TcpListener::bind(SocketAddr::new(ip, addr.port))
            .await
            .map_err(|e| listen_error("tcp", &shown, &e))?
    } else {
        TcpListener::bind((addr.host.as_str(), addr.port))
            .await
            .map_err(|e| listen_error("tcp", &shown, &e))?
    };
    Ok(listener)
}

/// Binds the Unix socket, removing a stale socket file but never one a live server holds.
async fn bind_unix(path: &Path) -> Result<UnixListener, StartError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let probe = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::UnixStream::connect(path),
            )
            .await;
            if matches!(probe, Ok(Ok(_))) {
                return Err(StartError(format!(
                    "socket {} is already in use by a running server",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                StartError(format!(
                    "failed to remove stale socket {}: {e}",
                    path.display()
                ))
            })?;
        }
    }
    UnixListener::bind(path).map_err(|e| listen_error("unix", &path.display().to_string(), &e))
}

/// `--redirport`: one plain HTTP listener per TCP address, with the main port it sends to.
async fn bind_redirects(
    config: &Config,
    listeners: &[Listener],
) -> Result<Vec<(TcpListener, u16)>, StartError> {
    let Some(port) = config.redirect_port else {
        return Ok(Vec::new());
    };
    let mut redirects = Vec::new();
    for addr in &config.tcp {
        // The port the main listener got (it differs from --port only for --port=0).
        let main_port = listeners
            .iter()
            .find_map(|l| match l {
                Listener::Tcp(l, host) if *host == addr.host => {
                    l.local_addr().ok().map(|a| a.port())
                }
                _ => None,
            })
            .unwrap_or(addr.port);
        let host = addr.host.clone();
        redirects.push((bind_tcp(&TcpAddr { host, port }).await?, main_port));
    }
    Ok(redirects)
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    let mut last_error: Option<io::ErrorKind> = None;
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok((io, peer)) => {
                last_error = None;
                crate::metrics::http_connection();
                shared.reserve.accepted();
                let slot = register_pending(&shared);
                let shared = shared.clone();
                let tracker = shared.tracker.clone();
                tracker.spawn(async move {
                    match io {
                        Stream::Tcp(s) => serve_stream(s, peer, slot, shared).await,
                        Stream::Unix(s) => serve_stream(s, peer, slot, shared).await,
                    }
                });
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // Out of descriptors: free the reserve to take one waiting connection and
                // answer it 503; the others wait in the listen queue for the next turn.
                if shared.reserve.release() {
                    // The connection is waiting in the queue, so this accept is immediate.
                    match tokio::time::timeout(RESERVE_ACCEPT, accept(&listener)).await {
                        Ok(Ok((io, _))) => {
                            let reserve = shared.reserve.clone();
                            match io {
                                Stream::Tcp(s) => tokio::spawn(reserve.refuse(s)),
                                Stream::Unix(s) => tokio::spawn(reserve.refuse(s)),
                            };
                        }
                        // Never leave the reserve spent on nothing.
                        _ => shared.reserve.restore(),
                    }
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Err(e) => accept_failed(&mut last_error, "", &e).await,
        }
    }
}

/// Logs a failed accept once per kind of failure, not once per retry (`last_error` holds the
/// kind last logged), then pauses before the next try.
pub(crate) async fn accept_failed(
    last_error: &mut Option<io::ErrorKind>,
    listener: &str,
    e: &io::Error,
) {
    if *last_error != Some(e.kind()) {
        crate::error!("server", "{listener}accept failed: {e}; retrying");
        *last_error = Some(e.kind());
    }
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// hyper's HTTP/1 server settings for a connection: the request head bounded by
/// `--max-header-bytes` and, unless it is off, `--header-timeout-ms`.
pub(crate) fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(config.max_header_bytes);
    if let Some(t) = config.header_timeout {
        builder.header_read_timeout(t);
    }
    builder
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Stream, Peer)> {
    match listener {
        Listener::Tcp(l, _) => {
            let (s, addr) = l.accept().await?;
            // Messages are small and latency matters more than packet count.
            let _ = s.set_nodelay(true);
            let fd = s.as_raw_fd();
            Ok((
                Stream::Tcp(s),
                Peer {
                    addr: Some(addr),
                    fd,
                },
            ))
        }
        Listener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            let fd = s.as_raw_fd();
            Ok((Stream::Unix(s), Peer { addr: None, fd }))
        }
    }
}

/// Registers a new connection among those without a handshake, in accept order, so that the
/// oldest is the one evicted beyond `--max-pending`.
pub(crate) fn register_pending(shared: &Shared) -> PendingSlot {
    let (slot, evicted) = shared.pending.register();
    if let Some(Evicted(open_for)) = evicted {
        crate::metrics::rejected("evicted");
        crate::error!(
            "server",
            "more than {} connections without a handshake (--max-pending): closed the oldest, open for {:.1}s",
            shared.config.max_pending.unwrap_or(0),
            open_for.as_secs_f64()
        );
    }
    slot
}

/// With `--ssl`, the TLS handshake first, here in the connection's own task (see
/// [`crate::tls`]); an evicted connection or a shutdown ends it too.
async fn serve_stream<S>(io: S, peer: Peer, slot: PendingSlot, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = shared.config.tls.clone() else {
        return serve_connection(io, peer, slot, shared).await;
    };
    let stream = tokio::select! {
        s = tls.accept(io, peer.addr, shared.config.header_timeout) => s,
        _ = slot.evicted.cancelled() => None,
        _ = shared.shutdown.cancelled() => None,
    };
    if let Some(stream) = stream {
        serve_connection(stream, peer, slot, shared).await;
    }
}

async fn serve_connection<S>(io: S, peer: Peer, slot: PendingSlot, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = peer.addr;
    let peer = Arc::new(peer);
    let svc_shared = shared.clone();
    let service = service_fn(move |req| http::handle(svc_shared.clone(), peer.clone(), req));
    let conn = http1_builder(&shared.config)
        .serve_connection(
            TokioIo::new(crate::lenient::LenientTarget::new(io)),
            service,
        )
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                log_connection_error(&e, remote);
            }
        }
        _ = slot.evicted.cancelled() => {}
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// Logs, once per connection, why hyper gave up on it. Malformed and oversized requests have
/// already been answered (400, 431) by hyper; a header timeout closes without an answer.
fn log_connection_error(e: &hyper::Error, remote: Option<SocketAddr>) {
    let remote = crate::http::client_ip(remote);
    if e.is_timeout() {
        crate::metrics::rejected("header_timeout");
        crate::access!(
            "http",
            "closed a connection from {remote}: no complete request headers in time"
        );
    } else if e.is_parse_too_large() {
        crate::metrics::rejected("431");
        crate::access!(
            "http",
            "431: request headers from {remote} over --max-header-bytes"
        );
    } else if e.is_parse() || e.is_parse_status() {
        crate::metrics::rejected("400");
        crate::access!("http", "400: malformed request from {remote}: {e}");
    } else if e.is_incomplete_message() {
        crate::debug!("http", "connection from {remote} closed mid-request");
    } else {
        crate::debug!("http", "connection from {remote}: {e}");
    }
}
