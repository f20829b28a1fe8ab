//! The bridge for one connection: one WebSocket ⇄ one child process.
//!
//! Three concurrent parts, each bounded:
//! - the **output pump** (this task) reads the child's stdout, cuts it into messages and
//!   writes them to the client, flushing once per read so that a burst of lines costs one
//!   socket write; it also sends pings and notices the child's exit;
//! - the **client reader** (a task) reads messages and queues them for the child's stdin in a
//!   channel of [`STDIN_QUEUE`] messages; when the queue is full it stops reading the socket,
//!   so a client that sends faster than the child reads is stalled by TCP;
//! - the **stdin writer** (a task) writes queued messages to the child's stdin.
//!
//! The session ends when the child's output ends, the client leaves or fails the protocol, the
//! peer stops answering pings, or the server shuts down. Teardown never waits on a pipe: the
//! stdin writer is aborted (closing stdin) before the child is signalled.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broadcast::Subscription;
use crate::child::{ChildProcess, ChildStderr, ChildStdin, ChildStdout, Exit};
use crate::config::Config;
use crate::framing::{self, LineSplitter};

/// Most queued broadcast messages sent with one flush.
const FEED_BATCH: usize = 64;
/// Client messages waiting for the child's stdin. Small: the point is to let the socket stall.
const STDIN_QUEUE: usize = 8;
/// Stdin writes are batched up to this size when several messages are waiting.
const STDIN_BATCH: usize = 64 * 1024;
/// Tagged stderr lines (`--passstderr`) waiting to be sent.
const STDERR_QUEUE: usize = 16;
/// How long the output pump keeps reading after the child exited, for output still in the pipe
/// (a background grandchild may hold stdout open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);
/// How long the stdin writer may take to deliver what the client sent before the session
/// ended (plus `--closems`); a child that does not read must not hold up its teardown.
const STDIN_FLUSH: Duration = Duration::from_millis(100);
/// While the child is not reading, how often the reader checks whether the client hung up.
const HANGUP_CHECK: Duration = Duration::from_millis(200);
/// How long sending a close frame, and waiting for the client's reply, may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the stderr logger may take to log the last lines after the child is gone.
const STDERR_DRAIN: Duration = Duration::from_millis(200);

pub type Ws = WebSocketStream<TokioIo<Upgraded>>;
pub(crate) type Sink = SplitSink<Ws, Message>;

/// Message and byte counts, for the DISCONNECT log line.
#[derive(Default)]
struct Stats {
    msgs_in: AtomicU64,
    bytes_in: AtomicU64,
    msgs_out: AtomicU64,
    bytes_out: AtomicU64,
    /// Milliseconds since the session started when the client was last heard from.
    last_seen_ms: AtomicU64,
    /// The code of the first close frame sent or received; 0 before one.
    close_code: AtomicU16,
}

impl Stats {
    /// Notes a close frame; the first one is the connection's close code.
    fn closing(&self, code: CloseCode) {
        let _ = self.close_code.compare_exchange(
            0,
            u16::from(code),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Relaxed)
    }

    fn log_disconnect(&self, started: Instant, program: &str) {
        crate::access!(
            "session",
            "DISCONNECT after {:.3}s, {program}, in {} msgs / {} bytes, out {} msgs / {} bytes",
            started.elapsed().as_secs_f64(),
            self.msgs_in.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            self.msgs_out.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        );
    }
}

/// A connection that has been upgraded, with its child already running.
pub struct Session {
    pub config: Arc<Config>,
    pub child: ChildProcess,
    pub shutdown: CancellationToken,
    /// The `--maxforks` slot, released when the session (and its child) is gone.
    pub permit: Option<OwnedSemaphorePermit>,
    /// The connection's socket (see [`hung_up`]).
    pub socket_fd: std::os::fd::RawFd,
    pub metrics: crate::metrics::SessionMetrics,
}

/// How the client side ended.
#[derive(Debug)]
enum ClientEnd {
    /// A close handshake (tungstenite has already answered it).
    Closed,
    /// The client broke the protocol: close with this code.
    Failed(CloseCode, String),
    /// The connection dropped (FIN without close, RST, I/O error).
    Gone(String),
}

/// Why the session ended.
enum End {
    /// The child's output ended; its exit status if it had exited.
    ChildDone(Option<Exit>),
    Client(ClientEnd),
    /// Writing to the client failed.
    SendFailed(String),
    PeerDead,
    Shutdown,
    /// A broadcast subscriber fell `--send-queue` messages behind.
    TooSlow,
}

impl Session {
    /// Runs the session to the end, including the child's teardown.
    pub async fn run(mut self, ws: Ws) {
        let started = Instant::now();
        let stats = Arc::new(Stats::default());
        crate::access!("session", "CONNECT");

        let (mut sink, stream) = ws.split();
        let (stdin_tx, stdin_rx) = mpsc::channel::<StdinItem>(STDIN_QUEUE);
        let stdin_task = self
            .child
            .stdin
            .take()
            .map(|stdin| tokio::spawn(write_stdin(stdin, stdin_rx).in_current_span()));
        let mut reader = tokio::spawn(
            read_client(
                stream,
                stdin_tx,
                self.config.binary,
                stats.clone(),
                started,
                self.socket_fd,
            )
            .in_current_span(),
        );
        let (stderr_tx, stderr_rx) = mpsc::channel::<String>(STDERR_QUEUE);
        let stderr_task = self.child.stderr.take().map(|stderr| {
            let tx = self.config.pass_stderr.then_some(stderr_tx);
            tokio::spawn(pump_stderr(stderr, tx, self.config.max_line_bytes).in_current_span())
        });
        let stderr_rx = self.config.pass_stderr.then_some(stderr_rx);
        let stdout = self.child.stdout.take();

        let end = {
            let pump = pump_output(
                &mut sink,
                stdout,
                stderr_rx,
                &mut self.child,
                &self.config,
                &stats,
                started,
            );
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => End::Shutdown,
                r = &mut reader => End::Client(r.unwrap_or_else(|e| ClientEnd::Gone(e.to_string()))),
                r = pump => r,
            }
        };

        let grace = self.config.close_grace;
        if matches!(end, End::ChildDone(_)) {
            // The child is gone: nothing more can reach its stdin.
            finish_stdin(stdin_task, Duration::ZERO).await;
        } else {
            // What the client sent before the end still goes to stdin, then stdin is closed
            // (the child may be waiting for EOF to finish by itself).
            reader.abort();
            finish_stdin(stdin_task, STDIN_FLUSH + grace).await;
        }
        let exit = match end {
            End::ChildDone(exit) => {
                let exit = match exit {
                    Some(exit) => {
                        self.child.kill_leftovers();
                        Some(exit)
                    }
                    None => self.child.terminate(grace).await,
                };
                let frame = match exit {
                    Some(e) if e.success() => close_frame(CloseCode::Normal, ""),
                    Some(e) => close_frame(CloseCode::Error, &e.to_string()),
                    None => close_frame(CloseCode::Error, "the program could not be reaped"),
                };
                if send_close(&mut sink, frame, &stats).await {
                    // Wait for the client's answer to our close frame.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut reader).await;
                }
                exit
            }
            End::Client(ClientEnd::Closed) => {
                crate::trace!("websocket", "client closed the connection");
                self.child.terminate(grace).await
            }
            End::Client(ClientEnd::Gone(why)) => {
                crate::trace!("websocket", "connection lost: {why}");
                self.child.terminate(grace).await
            }
            End::Client(ClientEnd::Failed(code, why)) => {
                crate::access!("session", "closing with {}: {why}", u16::from(code));
                send_close(&mut sink, close_frame(code, &why), &stats).await;
                self.child.terminate(grace).await
            }
            End::SendFailed(why) => {
                crate::trace!("websocket", "cannot send: {why}");
                self.child.terminate(grace).await
            }
            End::TooSlow => self.child.terminate(grace).await,
            End::PeerDead => {
                crate::access!("session", "no answer to pings: dropping the connection");
                let (_, exit) = tokio::join!(
                    send_close(
                        &mut sink,
                        close_frame(CloseCode::Away, "ping timeout"),
                        &stats
                    ),
                    self.child.terminate(grace)
                );
                exit
            }
            End::Shutdown => {
                let (_, exit) = tokio::join!(
                    send_close(
                        &mut sink,
                        close_frame(CloseCode::Away, "server shutting down"),
                        &stats
                    ),
                    self.child.terminate(grace)
                );
                exit
            }
        };
        reader.abort();
        if let Some(mut task) = stderr_task {
            if tokio::time::timeout(STDERR_DRAIN, &mut task).await.is_err() {
                task.abort();
            }
        }
        drop(sink);
        drop(self.permit.take());

        let exit = exit.map_or_else(|| "unknown".to_string(), |e| e.to_string());
        stats.log_disconnect(started, &exit);
        self.metrics.close(stats.close_code());
    }
}

/// A connection to a `--broadcast` hub: the shared program's output from the subscription's
/// queue, client messages to the shared stdin.
pub struct SharedSession {
    pub config: Arc<Config>,
    pub subscription: Subscription,
    pub shutdown: CancellationToken,
    pub socket_fd: std::os::fd::RawFd,
    pub metrics: crate::metrics::SessionMetrics,
}

impl SharedSession {
    pub async fn run(mut self, ws: Ws) {
        let started = Instant::now();
        let stats = Arc::new(Stats::default());
        crate::access!("session", "CONNECT");
        let (mut sink, stream) = ws.split();
        let mut reader = tokio::spawn(
            read_client(
                stream,
                self.subscription.stdin(),
                self.config.binary,
                stats.clone(),
                started,
                self.socket_fd,
            )
            .in_current_span(),
        );
        let mut pinger = Pinger::new(self.config.ping_interval);
        let replay: Vec<Message> = self.subscription.replay.drain(..).map(|i| i.1).collect();
        let mut end = match send_batch(&mut sink, replay, &stats).await {
            Ok(()) => None,
            Err(e) => Some(End::SendFailed(e.to_string())),
        };
        while end.is_none() {
            end = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => Some(End::Shutdown),
                _ = self.subscription.kicked.cancelled() => Some(End::TooSlow),
                r = &mut reader => Some(End::Client(r.unwrap_or_else(|e| ClientEnd::Gone(e.to_string())))),
                item = self.subscription.rx.recv() => match item {
                    Some((_, first)) => {
                        let mut batch = vec![first];
                        while batch.len() < FEED_BATCH {
                            match self.subscription.rx.try_recv() {
                                Ok((_, more)) => batch.push(more),
                                Err(_) => break,
                            }
                        }
                        send_batch(&mut sink, batch, &stats).await.err().map(|e| End::SendFailed(e.to_string()))
                    }
                    None => Some(End::ChildDone(None)),
                },
                _ = Pinger::tick(&mut pinger) => match &pinger {
                    Some(p) => p.ping(&mut sink, &stats, started).await,
                    None => None,
                },
            };
        }
        let frame = match end.expect("the loop ends with a reason") {
            End::ChildDone(_) => Some(
                self.subscription
                    .end_frame()
                    .unwrap_or_else(|| close_frame(CloseCode::Error, "the program ended")),
            ),
            End::TooSlow => Some(close_frame(
                CloseCode::Again,
                "too slow: fell --send-queue messages behind",
            )),
            End::Client(ClientEnd::Failed(code, why)) => {
                crate::access!("session", "closing with {}: {why}", u16::from(code));
                Some(close_frame(code, &why))
            }
            End::Client(_) | End::SendFailed(_) => None,
            End::PeerDead => {
                crate::access!("session", "no answer to pings: dropping the connection");
                Some(close_frame(CloseCode::Away, "ping timeout"))
            }
            End::Shutdown => Some(close_frame(CloseCode::Away, "server shutting down")),
        };
        if let Some(frame) = frame {
            if send_close(&mut sink, frame, &stats).await && !reader.is_finished() {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut reader).await;
            }
        }
        reader.abort();
        drop(sink);
        let ended = self.subscription.end_frame();
        drop(self.subscription);
        let program = match ended {
            Some(f) if f.code == CloseCode::Normal => "shared program: exit status 0".to_string(),
            Some(f) => format!("shared program: {}", f.reason),
            None => "shared program still running".to_string(),
        };
        stats.log_disconnect(started, &program);
        self.metrics.close(stats.close_code());
    }
}

pub(crate) fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    // A close reason is limited to 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].to_string().into(),
    }
}

/// Sends a close frame, giving up after [`CLOSE_TIMEOUT`]; true if it was sent.
async fn send_close(sink: &mut Sink, frame: CloseFrame, stats: &Stats) -> bool {
    stats.closing(frame.code);
    matches!(
        tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    )
}

/// `--pingms`: when to ping, and whether the peer has gone silent.
pub(crate) struct Pinger {
    interval: tokio::time::Interval,
    every: Duration,
}

impl Pinger {
    pub(crate) fn new(every: Option<Duration>) -> Option<Pinger> {
        every.map(|every| {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Pinger { interval, every }
        })
    }

    /// Waits for the next ping time; pending forever without `--pingms`.
    pub(crate) async fn tick(pinger: &mut Option<Pinger>) {
        match pinger {
            Some(p) => {
                p.interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Whether the client has been silent for two intervals.
    fn peer_dead(&self, stats: &Stats, started: Instant) -> bool {
        let silent_ms = (started.elapsed().as_millis() as u64)
            .saturating_sub(stats.last_seen_ms.load(Ordering::Relaxed));
        silent_ms > 2 * self.every.as_millis() as u64
    }

    /// At a tick: drops a silent peer, pings the others.
    async fn ping(&self, sink: &mut Sink, stats: &Stats, started: Instant) -> Option<End> {
        if self.peer_dead(stats, started) {
            return Some(End::PeerDead);
        }
        crate::trace!("websocket", "ping");
        match sink.send(Message::Ping(Bytes::new())).await {
            Ok(()) => None,
            Err(e) => Some(End::SendFailed(e.to_string())),
        }
    }
}

/// Child output → client. Returns when the output has ended (and, with `--passstderr`, stderr
/// too), or on a failure to send, or when the peer stopped answering pings.
async fn pump_output(
    sink: &mut Sink,
    stdout: Option<ChildStdout>,
    mut stderr_rx: Option<mpsc::Receiver<String>>,
    child: &mut ChildProcess,
    config: &Config,
    stats: &Stats,
    started: Instant,
) -> End {
    let mut stdout =
        stdout.map(|out| framing::Output::new(out, config.binary, config.max_line_bytes));
    let mut encoder = Encoder::new(config);
    let mut exit: Option<Exit> = None;
    let drain_deadline = tokio::time::sleep(Duration::from_secs(86400));
    tokio::pin!(drain_deadline);
    let mut pinger = Pinger::new(config.ping_interval);

    loop {
        if stdout.is_none() && stderr_rx.is_none() {
            return End::ChildDone(exit);
        }
        tokio::select! {
            (payloads, ended) = async {
                stdout.as_mut().expect("guarded by the select condition").read().await
            }, if stdout.is_some() => {
                if ended {
                    stdout = None;
                }
                let batch = payloads.into_iter().map(|p| encoder.message(p)).collect();
                if let Err(e) = send_batch(sink, batch, stats).await {
                    return End::SendFailed(e.to_string());
                }
            }
            line = async { stderr_rx.as_mut().expect("guarded by the select condition").recv().await }, if stderr_rx.is_some() => {
                match line {
                    Some(json) => {
                        if let Err(e) = send_batch(sink, vec![Message::Text(json.into())], stats).await {
                            return End::SendFailed(e.to_string());
                        }
                    }
                    None => stderr_rx = None,
                }
            }
            status = child.wait(), if exit.is_none() => {
                match status {
                    Ok(status) => {
                        crate::debug!("process", "Process exited: {status}");
                        exit = Some(status);
                    }
                    Err(e) => crate::error!("process", "cannot wait for the process: {e}"),
                }
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = &mut drain_deadline, if exit.is_some() => {
                crate::debug!("process", "the process exited but its output is still open (a background process?); ending");
                return End::ChildDone(exit);
            }
            _ = Pinger::tick(&mut pinger) => {
                if let Some(p) = &pinger {
                    if let Some(end) = p.ping(sink, stats, started).await {
                        return end;
                    }
                }
            }
        }
    }
}

/// Output payloads → WebSocket messages: binary as they are, text with invalid UTF-8 replaced
/// (warned about once), or `--passstderr`'s tagged JSON.
pub(crate) struct Encoder {
    binary: bool,
    tagged: bool,
    warned_utf8: bool,
}

impl Encoder {
    pub(crate) fn new(config: &Config) -> Encoder {
        Encoder {
            binary: config.binary,
            tagged: config.pass_stderr,
            warned_utf8: false,
        }
    }

    pub(crate) fn message(&mut self, payload: Bytes) -> Message {
        if self.binary {
            Message::Binary(payload)
        } else {
            text_message(payload, self.tagged, &mut self.warned_utf8)
        }
    }
}

fn text_message(line: Bytes, tagged: bool, warned: &mut bool) -> Message {
    if tagged {
        return Message::Text(framing::tagged_json("stdout", &line).into());
    }
    let (text, replaced) = framing::to_text(line);
    if replaced && !*warned {
        *warned = true;
        crate::error!("process", "the program wrote invalid UTF-8; invalid bytes were replaced by U+FFFD (use --binary for binary output)");
    }
    Message::Text(text)
}

/// Writes messages and flushes once.
async fn send_batch(sink: &mut Sink, batch: Vec<Message>, stats: &Stats) -> Result<(), WsError> {
    if batch.is_empty() {
        return Ok(());
    }
    let count = batch.len() as u64;
    let mut bytes = 0u64;
    for msg in batch {
        bytes += msg.len() as u64;
        sink.feed(msg).await?;
    }
    sink.flush().await?;
    stats.msgs_out.fetch_add(count, Ordering::Relaxed);
    stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    crate::metrics::sent(count, bytes);
    Ok(())
}

/// Lets the stdin writer deliver what is queued for at most `within`, then closes stdin.
async fn finish_stdin(task: Option<JoinHandle<()>>, within: Duration) {
    if let Some(mut task) = task {
        // No time given: no timer either (a zero timeout still waits for the timer's next tick,
        // up to a millisecond, and wakes the event loop to arm it).
        if within.is_zero() || tokio::time::timeout(within, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Whether the peer of a socket has hung up (FIN or RST), without reading from it: the
/// socket may hold unread data the session cannot take yet.
fn hung_up(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout; the fd belongs to this session's connection.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Client → stdin queue. Ends when the client closes, fails or drops.
async fn read_client(
    mut stream: SplitStream<Ws>,
    stdin_tx: mpsc::Sender<StdinItem>,
    binary: bool,
    stats: Arc<Stats>,
    started: Instant,
    socket_fd: std::os::fd::RawFd,
) -> ClientEnd {
    let mut closing = false;
    let mut stdin_open = true;
    loop {
        let msg = match stream.next().await {
            None if closing => return ClientEnd::Closed,
            None => return ClientEnd::Gone("connection closed".into()),
            Some(Ok(msg)) => msg,
            Some(Err(WsError::ConnectionClosed)) if closing => return ClientEnd::Closed,
            Some(Err(e)) => return classify(e),
        };
        stats
            .last_seen_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let data = match msg {
            Message::Text(text) => with_newline(text.into()),
            Message::Binary(data) if binary => StdinItem {
                data,
                newline: false,
            },
            Message::Binary(data) => with_newline(data),
            Message::Close(frame) => {
                stats.closing(frame.map_or(CloseCode::Status, |f| f.code));
                closing = true;
                continue;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        stats.msgs_in.fetch_add(1, Ordering::Relaxed);
        crate::metrics::received(data.data.len() as u64);
        stats
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // After the child has gone, keep reading (to see the client's close) but drop data.
        if !stdin_open {
            continue;
        }
        let data = match stdin_tx.try_send(data) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                stdin_open = false;
                continue;
            }
            Err(mpsc::error::TrySendError::Full(data)) => data,
        };
        // The child is not keeping up: stop reading the socket (so TCP stalls the client),
        // but notice if the client hangs up meanwhile, which a read would have shown.
        let permit = loop {
            tokio::select! {
                permit = stdin_tx.reserve() => break permit.ok(),
                _ = tokio::time::sleep(HANGUP_CHECK) => {
                    if hung_up(socket_fd) {
                        return ClientEnd::Gone("connection dropped while the program was not reading".into());
                    }
                }
            }
        };
        match permit {
            Some(permit) => permit.send(data),
            None => stdin_open = false,
        }
    }
}

/// A client message on its way to stdin. The newline is kept apart from the data so that a
/// large message is written as it arrived, never copied.
pub(crate) struct StdinItem {
    data: Bytes,
    newline: bool,
}

impl StdinItem {
    fn len(&self) -> usize {
        self.data.len() + usize::from(self.newline)
    }
}

/// A client message as a line for stdin.
fn with_newline(data: Bytes) -> StdinItem {
    StdinItem {
        data,
        newline: true,
    }
}

/// The close code for a read error.
fn classify(e: WsError) -> ClientEnd {
    match e {
        // tungstenite's text for this error quotes the message itself: leave it out.
        WsError::Utf8(_) => {
            ClientEnd::Failed(CloseCode::Invalid, "invalid UTF-8 in a text message".into())
        }
        // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
        WsError::Capacity(CapacityError::MessageTooLong { size, .. })
            if size > i64::MAX as usize =>
        {
            ClientEnd::Failed(
                CloseCode::Protocol,
                "invalid frame length: the most significant bit is set".into(),
            )
        }
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => ClientEnd::Failed(
            CloseCode::Size,
            format!("message of {size} bytes is over the limit of {max_size}"),
        ),
        WsError::Capacity(e) => ClientEnd::Failed(CloseCode::Size, e.to_string()),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ClientEnd::Gone("connection dropped without a close frame".into())
        }
        WsError::Protocol(p) => ClientEnd::Failed(CloseCode::Protocol, p.to_string()),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            ClientEnd::Gone("connection closed".into())
        }
        other => ClientEnd::Gone(other.to_string()),
    }
}

/// Queue → child's stdin, batching small messages that are waiting into one write.
pub(crate) async fn write_stdin(mut stdin: ChildStdin, mut rx: mpsc::Receiver<StdinItem>) {
    let mut batch = BytesMut::new();
    let mut next = rx.recv().await;
    while let Some(item) = next.take() {
        let result = if item.len() >= STDIN_BATCH {
            write_item(&mut stdin, &item).await
        } else {
            append(&mut batch, &item);
            while batch.len() < STDIN_BATCH {
                match rx.try_recv() {
                    Ok(more) if more.len() < STDIN_BATCH => append(&mut batch, &more),
                    Ok(more) => {
                        next = Some(more);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let r = stdin.write_all(&batch).await;
            if batch.capacity() > STDIN_BATCH {
                // Do not keep a burst's buffer for the rest of a long, quiet session.
                batch = BytesMut::new();
            }
            batch.clear();
            r
        };
        if let Err(e) = result {
            crate::debug!("process", "Cannot write to STDIN: {e}");
            return;
        }
        if next.is_none() {
            next = rx.recv().await;
        }
    }
}

fn append(batch: &mut BytesMut, item: &StdinItem) {
    batch.extend_from_slice(&item.data);
    if item.newline {
        batch.put_u8(b'\n');
    }
}

async fn write_item(stdin: &mut ChildStdin, item: &StdinItem) -> std::io::Result<()> {
    stdin.write_all(&item.data).await?;
    if item.newline {
        stdin.write_all(b"\n").await?;
    }
    Ok(())
}

/// The child's stderr: each line is logged, and with `--passstderr` also queued for the
/// client as tagged JSON.
pub(crate) async fn pump_stderr(
    stderr: ChildStderr,
    tx: Option<mpsc::Sender<String>>,
    max_line: usize,
) {
    let mut lines = LineSplitter::new(max_line);
    loop {
        let n = match lines.read_from(&stderr).await {
            Ok(n) => n,
            Err(e) => {
                crate::error!(
                    "process",
                    "Unexpected error while reading STDERR from process: {e}"
                );
                0
            }
        };
        for line in lines.take_lines(n == 0) {
            crate::error!("stderr", "{}", String::from_utf8_lossy(&line));
            if let Some(tx) = &tx {
                let json = framing::tagged_json("stderr", &line);
                if tx.send(json).await.is_err() {
                    return;
                }
            }
        }
        if n == 0 {
            crate::debug!("process", "Process STDERR closed");
            return;
        }
    }
}

/// What runs on an upgraded connection.
pub enum Bridge {
    /// A program of its own.
    Own(Box<Session>),
    /// A `--broadcast` hub's shared program.
    Shared(SharedSession),
}

/// Starts a session on an upgraded connection once the upgrade completes.
pub fn spawn_after_upgrade(
    tracker: &tokio_util::task::TaskTracker,
    upgrade: hyper::upgrade::OnUpgrade,
    bridge: Bridge,
    ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    span: tracing::Span,
) -> JoinHandle<()> {
    tracker.spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        Some(ws_config),
                    )
                    .await;
                    match bridge {
                        Bridge::Own(session) => session.run(ws).await,
                        Bridge::Shared(session) => session.run(ws).await,
                    }
                }
                Err(e) => {
                    crate::access!("session", "upgrade failed: {e}");
                    if let Bridge::Own(mut session) = bridge {
                        session.child.terminate(session.config.close_grace).await;
                    }
                }
            }
        }
        .instrument(span),
    )
}
