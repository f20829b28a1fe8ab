//! The bridge for one connection: one WebSocket ⇄ one child process.
//!
//! Three concurrent parts, each bounded:
//! - the **output pump** (this task) reads the child's stdout, cuts it into messages and
//!   writes them to the client, flushing once per read so that a burst of lines costs one
//!   socket write; it also sends pings and notices the child's exit;
//! - the **client reader** (a task) reads messages and writes them to the child's stdin
//!   itself, the messages that arrived together in one write; while a write waits for the
//!   child, it does not read the socket, so a client that sends faster than the child reads
//!   is stalled by TCP. No queue sits between the two: a message costs no copy and no task
//!   switch on its way, and an idle connection no queue's memory;
//!
//! The output pump also reads the child's stderr (each line is logged, and with
//! `--passstderr` sent), and goes on logging it while the session ends.
//!
//! The session ends when the child's output ends, the client leaves or fails the protocol, the
//! peer stops answering pings, or the server shuts down. Teardown never waits on a pipe for
//! long: the reader gets [`STDIN_FLUSH`] (plus `--closems`) to finish its write, then it is
//! aborted, closing stdin, before the child is signalled.

use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
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
/// Stdin writes are batched up to this size when several messages are waiting.
const STDIN_BATCH: usize = 64 * 1024;
/// How long the output pump keeps reading after the child exited, for output still in the pipe
/// (a background grandchild may hold stdout open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);
/// How long the client reader may take to finish writing what the client sent before the
/// session ended (plus `--closems`); a child that does not read must not hold up its teardown.
const STDIN_FLUSH: Duration = Duration::from_millis(100);
/// While the child is not reading, how often the reader checks whether the client hung up.
const HANGUP_CHECK: Duration = Duration::from_millis(200);
/// How long sending a close frame, and waiting for the client's reply, may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long stderr is still read, to log its last lines, after the child is gone.
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
    /// What the session asks of the client reader: [`READ_ON`], [`CLOSE_STDIN`] or [`STOP`].
    control: AtomicU8,
    /// Wakes the client reader to look at `control`.
    wake_reader: tokio::sync::Notify,
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
    pub async fn run(mut self, (mut sink, stream): (Sink, SplitStream<Ws>)) {
        let started = Instant::now();
        let stats = Arc::new(Stats::default());
        crate::access!("session", "CONNECT");

        let mut reader = tokio::spawn(
            read_client(
                stream,
                StdinTarget::pipe(self.child.stdin.take()),
                self.config.binary,
                stats.clone(),
                started,
                self.socket_fd,
            )
            .in_current_span(),
        );
        let mut stderr = self
            .child
            .stderr
            .take()
            .map(|pipe| StderrLog::new(pipe, self.config.max_line_bytes));
        let stdout = self.child.stdout.take();

        let mut reader_stdin = None;
        let end = {
            let pump = pump_output(
                &mut sink,
                stdout,
                &mut stderr,
                &mut self.child,
                &self.config,
                &stats,
                started,
            );
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => End::Shutdown,
                r = &mut reader => End::Client(match r {
                    Ok((end, stdin)) => {
                        // Closed below, before the program is told to end.
                        reader_stdin = Some(stdin);
                        end
                    }
                    Err(e) => ClientEnd::Gone(e.to_string()),
                }),
                r = pump => r,
            }
        };
        drop(reader_stdin);

        let grace = self.config.close_grace;
        let teardown = async {
            if matches!(end, End::ChildDone(_)) {
                // The child is gone: nothing more can reach its stdin. The reader goes on, for
                // the client's answer to the close frame.
                stats.tell_reader(CLOSE_STDIN);
            } else if !matches!(end, End::Client(_)) {
                // (With the client gone, the reader has ended, and its stdin is closed.)
                // What the client sent before the end still goes to stdin, then stdin is closed
                // (the child may be waiting for EOF to finish by itself).
                stats.tell_reader(STOP);
                if tokio::time::timeout(STDIN_FLUSH + grace, &mut reader)
                    .await
                    .is_err()
                {
                    reader.abort();
                    let _ = (&mut reader).await;
                }
            }
            match end {
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
                End::PeerDead | End::Shutdown => {
                    let reason = if matches!(end, End::PeerDead) {
                        crate::access!("session", "no answer to pings: dropping the connection");
                        "ping timeout"
                    } else {
                        "server shutting down"
                    };
                    let (_, exit) = tokio::join!(
                        send_close(&mut sink, close_frame(CloseCode::Away, reason), &stats),
                        self.child.terminate(grace)
                    );
                    exit
                }
            }
        };
        // The program may still say why it ended: its stderr is logged meanwhile.
        // Boxed: the teardown's futures then take no room in an idle session's task.
        let exit = log_stderr_during(&mut stderr, Box::pin(teardown)).await;
        reader.abort();
        if let Some(mut stderr) = stderr {
            let _ =
                tokio::time::timeout(STDERR_DRAIN, async { while !stderr.read().await.1 {} }).await;
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
    pub async fn run(mut self, (mut sink, stream): (Sink, SplitStream<Ws>)) {
        let started = Instant::now();
        let stats = Arc::new(Stats::default());
        crate::access!("session", "CONNECT");
        let mut reader = tokio::spawn(
            read_client(
                stream,
                StdinTarget::Shared(self.subscription.stdin()),
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
                r = &mut reader => Some(End::Client(r.map_or_else(|e| ClientEnd::Gone(e.to_string()), |(end, _)| end))),
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
/// too), or on a failure to send, or when the peer stopped answering pings. Stderr is read (and
/// logged) all along; it is set to `None` once it has ended.
async fn pump_output(
    sink: &mut Sink,
    stdout: Option<ChildStdout>,
    stderr: &mut Option<StderrLog>,
    child: &mut ChildProcess,
    config: &Config,
    stats: &Stats,
    started: Instant,
) -> End {
    let mut stdout =
        stdout.map(|out| framing::Output::new(out, config.binary, config.max_line_bytes));
    let mut encoder = Encoder::new(config);
    let mut exit: Option<Exit> = None;
    // Set once the child has exited; boxed, so that an idle session holds no timer for it.
    let mut drain_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut pinger = Pinger::new(config.ping_interval);

    loop {
        if stdout.is_none() && (stderr.is_none() || !config.pass_stderr) {
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
            lines = read_stderr(stderr), if stderr.is_some() => {
                if config.pass_stderr {
                    let batch = lines
                        .iter()
                        .map(|line| Message::Text(framing::tagged_json("stderr", line).into()))
                        .collect();
                    if let Err(e) = send_batch(sink, batch, stats).await {
                        return End::SendFailed(e.to_string());
                    }
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
                drain_deadline = Some(Box::pin(tokio::time::sleep(DRAIN_AFTER_EXIT)));
            }
            _ = async { drain_deadline.as_mut().expect("guarded by the select condition").await }, if drain_deadline.is_some() => {
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

/// Where the client reader puts client messages.
pub(crate) enum StdinTarget {
    /// The connection's own program: the reader writes to its stdin itself, so a message
    /// waits in no queue and no second task. `batch` gathers messages that arrived together.
    Pipe { pipe: ChildStdin, batch: BytesMut },
    /// A `--broadcast` hub's queue for the shared program's single stdin writer.
    Shared(mpsc::Sender<StdinItem>),
    /// Nowhere: the program's stdin is closed (it exited, or stopped reading).
    Closed,
}

impl StdinTarget {
    pub(crate) fn pipe(pipe: Option<ChildStdin>) -> StdinTarget {
        match pipe {
            Some(pipe) => StdinTarget::Pipe {
                pipe,
                batch: BytesMut::new(),
            },
            None => StdinTarget::Closed,
        }
    }
}

/// What the session asks of its client reader when it ends (see [`Stats::control`]).
const READ_ON: u8 = 0;
/// The program has gone: close its stdin, keep reading for the client's close frame.
const CLOSE_STDIN: u8 = 1;
/// Finish writing what has been read, then stop.
const STOP: u8 = 2;

impl Stats {
    fn control(&self) -> u8 {
        self.control.load(Ordering::Acquire)
    }

    /// Asks the client reader to close stdin ([`CLOSE_STDIN`]) or stop ([`STOP`]).
    fn tell_reader(&self, what: u8) {
        self.control.store(what, Ordering::Release);
        self.wake_reader.notify_one();
    }
}

/// One client message, as the reader sees it.
enum Step {
    /// Data for the program's stdin.
    Data(StdinItem),
    /// Nothing for stdin (a ping, a pong, a close frame, or data after stdin closed).
    Skip,
    End(ClientEnd),
}

/// The client reader's view of the connection.
struct ClientReader {
    binary: bool,
    stats: Arc<Stats>,
    started: Instant,
    /// A close frame has come: the end of the stream is then a clean close.
    closing: bool,
}

impl ClientReader {
    fn step(&mut self, next: Option<Result<Message, WsError>>) -> Step {
        let msg = match next {
            None if self.closing => return Step::End(ClientEnd::Closed),
            None => return Step::End(ClientEnd::Gone("connection closed".into())),
            Some(Ok(msg)) => msg,
            Some(Err(WsError::ConnectionClosed)) if self.closing => {
                return Step::End(ClientEnd::Closed)
            }
            Some(Err(e)) => return Step::End(classify(e)),
        };
        let stats = &self.stats;
        stats
            .last_seen_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let item = match msg {
            Message::Text(text) => with_newline(text.into()),
            Message::Binary(data) if self.binary => StdinItem {
                data,
                newline: false,
            },
            Message::Binary(data) => with_newline(data),
            Message::Close(frame) => {
                stats.closing(frame.map_or(CloseCode::Status, |f| f.code));
                self.closing = true;
                return Step::Skip;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Step::Skip,
        };
        stats.msgs_in.fetch_add(1, Ordering::Relaxed);
        crate::metrics::received(item.data.len() as u64);
        stats
            .bytes_in
            .fetch_add(item.len() as u64, Ordering::Relaxed);
        Step::Data(item)
    }
}

/// Client → the program's stdin. Ends when the client closes, fails or drops, or when the
/// session tells it to stop.
///
/// While the program is not keeping up, the reader does not read the socket, so TCP stalls a
/// client that sends faster than the program reads; meanwhile it checks every
/// [`HANGUP_CHECK`] whether the client hung up, which a read would have shown.
///
/// Returns the stdin target with the reason, so that stdin is closed by the session, after it
/// has seen why the reader ended, and not before: the program must not see EOF and end the
/// session first.
async fn read_client(
    mut stream: SplitStream<Ws>,
    mut stdin: StdinTarget,
    binary: bool,
    stats: Arc<Stats>,
    started: Instant,
    socket_fd: std::os::fd::RawFd,
) -> (ClientEnd, StdinTarget) {
    let reader = ClientReader {
        binary,
        stats,
        started,
        closing: false,
    };
    let end = read_into(&mut stream, &mut stdin, reader, socket_fd).await;
    (end, stdin)
}

async fn read_into(
    stream: &mut SplitStream<Ws>,
    stdin: &mut StdinTarget,
    mut reader: ClientReader,
    socket_fd: std::os::fd::RawFd,
) -> ClientEnd {
    // After a write to the pipe, the messages that arrived meanwhile are taken without
    // waiting and go to stdin together, in one write. A message that comes alone is written
    // at once, as it is: no copy, and no read of the socket before it.
    let mut gather = false;
    loop {
        match reader.stats.control() {
            READ_ON => {}
            CLOSE_STDIN => *stdin = StdinTarget::Closed,
            _ => return ClientEnd::Gone("the session ended".into()),
        }
        if std::mem::take(&mut gather) {
            if let StdinTarget::Pipe { pipe, batch } = stdin {
                let mut end = None;
                let mut large = None;
                let mut more = stream.next().now_or_never();
                while let Some(next) = more.take() {
                    match reader.step(next) {
                        Step::Data(item) if item.len() >= STDIN_BATCH => large = Some(item),
                        Step::Data(item) => append(batch, &item),
                        Step::Skip => {}
                        Step::End(e) => end = Some(e),
                    }
                    if end.is_none() && large.is_none() && batch.len() < STDIN_BATCH {
                        more = stream.next().now_or_never();
                    }
                }
                if !batch.is_empty() || large.is_some() {
                    let delivered = write_pipe(pipe, batch, large, &reader.stats, socket_fd).await;
                    recycle(batch);
                    if let Some(end) = delivered.apply(stdin) {
                        return end;
                    }
                    gather = true;
                }
                if let Some(end) = end {
                    return end;
                }
                if gather {
                    continue;
                }
            }
        }
        let next = tokio::select! {
            biased;
            _ = reader.stats.wake_reader.notified() => continue,
            next = stream.next() => next,
        };
        let item = match reader.step(next) {
            Step::Data(item) => item,
            Step::Skip => continue,
            Step::End(end) => return end,
        };
        let delivered = match stdin {
            // After the program has gone, keep reading (to see the client's close) but drop
            // data.
            StdinTarget::Closed => continue,
            StdinTarget::Shared(tx) => queue_shared(tx, item, socket_fd).await,
            StdinTarget::Pipe { pipe, .. } => {
                gather = true;
                write_pipe(pipe, &[], Some(item), &reader.stats, socket_fd).await
            }
        };
        if let Some(end) = delivered.apply(stdin) {
            return end;
        }
    }
}

/// How handing a message to the program went.
enum Delivered {
    Yes,
    /// Stdin is closed (the program exited or closed it, or the session asked): drop data.
    StdinClosed,
    /// The client hung up while the program was not reading.
    HungUp,
}

impl Delivered {
    /// Notes a closed stdin; the end of the reader if the client hung up.
    fn apply(self, stdin: &mut StdinTarget) -> Option<ClientEnd> {
        match self {
            Delivered::Yes => None,
            Delivered::StdinClosed => {
                *stdin = StdinTarget::Closed;
                None
            }
            Delivered::HungUp => Some(ClientEnd::Gone(
                "connection dropped while the program was not reading".into(),
            )),
        }
    }
}

/// Queues a message for a `--broadcast` hub's stdin writer, waiting while its queue is full.
async fn queue_shared(
    tx: &mpsc::Sender<StdinItem>,
    item: StdinItem,
    socket_fd: std::os::fd::RawFd,
) -> Delivered {
    let item = match tx.try_send(item) {
        Ok(()) => return Delivered::Yes,
        Err(mpsc::error::TrySendError::Closed(_)) => return Delivered::StdinClosed,
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    // Boxed: the wait's timer takes no room in an idle connection's reader.
    Box::pin(wait_for_queue(tx, item, socket_fd)).await
}

async fn wait_for_queue(
    tx: &mpsc::Sender<StdinItem>,
    item: StdinItem,
    socket_fd: std::os::fd::RawFd,
) -> Delivered {
    match unless_hung_up(tx.reserve(), socket_fd).await {
        Some(Ok(permit)) => {
            permit.send(item);
            Delivered::Yes
        }
        Some(Err(_)) => Delivered::StdinClosed,
        None => Delivered::HungUp,
    }
}

/// Runs `work` to its end, or until the client hangs up (`None`), which is checked every
/// [`HANGUP_CHECK`]: the reader is not reading the socket meanwhile, so a read cannot show it.
async fn unless_hung_up<F: std::future::Future>(
    work: F,
    socket_fd: std::os::fd::RawFd,
) -> Option<F::Output> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Some(out),
            _ = tokio::time::sleep(HANGUP_CHECK) => {
                if hung_up(socket_fd) {
                    return None;
                }
            }
        }
    }
}

/// Writes `batch`, then `large`, to the program's stdin. A write that cannot finish at once
/// waits for the pipe, watching for the client hanging up and for the session closing stdin.
async fn write_pipe(
    pipe: &mut ChildStdin,
    batch: &[u8],
    large: Option<StdinItem>,
    stats: &Stats,
    socket_fd: std::os::fd::RawFd,
) -> Delivered {
    let write = async {
        if !batch.is_empty() {
            pipe.write_all(batch).await?;
        }
        if let Some(item) = large {
            write_item(pipe, item).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::pin!(write);
    let result = match write.as_mut().now_or_never() {
        Some(result) => result,
        // Boxed: the wait's timer takes no room in an idle connection's reader.
        None => match Box::pin(wait_for_pipe(write.as_mut(), stats, socket_fd)).await {
            Some(result) => result,
            None => return Delivered::HungUp,
        },
    };
    match result {
        Ok(()) => Delivered::Yes,
        Err(e) => {
            crate::debug!("process", "Cannot write to STDIN: {e}");
            Delivered::StdinClosed
        }
    }
}

/// Finishes a write to stdin that had to wait; `None` if the client hung up meanwhile. A
/// closed stdin ([`CLOSE_STDIN`]) ends it as a broken pipe; stopping lets it finish (the
/// session bounds how long it waits).
async fn wait_for_pipe(
    mut write: impl std::future::Future<Output = std::io::Result<()>> + Unpin,
    stats: &Stats,
    socket_fd: std::os::fd::RawFd,
) -> Option<std::io::Result<()>> {
    let until_closed = async {
        loop {
            tokio::select! {
                biased;
                _ = stats.wake_reader.notified() => {
                    if stats.control() == CLOSE_STDIN {
                        return Err(std::io::ErrorKind::BrokenPipe.into());
                    }
                }
                result = &mut write => return result,
            }
        }
    };
    unless_hung_up(until_closed, socket_fd).await
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
            write_item(&mut stdin, item).await
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
            recycle(&mut batch);
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

/// Empties a batch after its write, without keeping a burst's buffer for the rest of a long,
/// quiet session.
fn recycle(batch: &mut BytesMut) {
    if batch.capacity() > STDIN_BATCH {
        *batch = BytesMut::new();
    }
    batch.clear();
}

/// Writes one message and its newline with one writev, without copying it.
async fn write_item(stdin: &mut ChildStdin, item: StdinItem) -> std::io::Result<()> {
    let newline: &[u8] = if item.newline { b"\n" } else { b"" };
    stdin.write_all_buf(&mut item.data.chain(newline)).await
}

/// A child's stderr: each line is logged as it is read.
pub(crate) struct StderrLog {
    pipe: ChildStderr,
    lines: LineSplitter,
}

impl StderrLog {
    pub(crate) fn new(pipe: ChildStderr, max_line: usize) -> StderrLog {
        StderrLog {
            pipe,
            lines: LineSplitter::new(max_line),
        }
    }

    /// Reads once and logs the complete lines; returns them (for `--passstderr`) and whether
    /// stderr has ended. Cancel-safe: the only await is the wait for data.
    pub(crate) async fn read(&mut self) -> (Vec<Bytes>, bool) {
        let n = self
            .lines
            .read_from(&mut self.pipe)
            .await
            .unwrap_or_else(|e| {
                crate::error!(
                    "process",
                    "Unexpected error while reading STDERR from process: {e}"
                );
                0
            });
        let lines = self.lines.take_lines(n == 0);
        for line in &lines {
            crate::error!("stderr", "{}", String::from_utf8_lossy(line));
        }
        if n == 0 {
            crate::debug!("process", "Process STDERR closed");
        }
        (lines, n == 0)
    }
}

/// Reads and logs `stderr` once ([`StderrLog::read`]); the lines read. Sets it to `None` once
/// it has ended. Polled only while it is `Some` (a `select!` condition).
async fn read_stderr(stderr: &mut Option<StderrLog>) -> Vec<Bytes> {
    let log = stderr.as_mut().expect("guarded by the select condition");
    let (lines, ended) = log.read().await;
    if ended {
        *stderr = None;
    }
    lines
}

/// Runs `work`, logging `stderr` meanwhile.
async fn log_stderr_during<F: std::future::Future>(
    stderr: &mut Option<StderrLog>,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = read_stderr(stderr), if stderr.is_some() => {}
        }
    }
}

/// A child's stderr in a task of its own: each line is logged, and with `--passstderr` also
/// queued for the client as tagged JSON.
pub(crate) async fn pump_stderr(
    stderr: ChildStderr,
    tx: Option<mpsc::Sender<String>>,
    max_line: usize,
) {
    let mut log = StderrLog::new(stderr, max_line);
    loop {
        let (lines, ended) = log.read().await;
        if let Some(tx) = &tx {
            for line in &lines {
                if tx.send(framing::tagged_json("stderr", line)).await.is_err() {
                    return;
                }
            }
        }
        if ended {
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
                        // Split here: a session's future then holds the halves, and not also
                        // room for the whole stream it was given.
                        Bridge::Own(session) => session.run(ws.split()).await,
                        Bridge::Shared(session) => session.run(ws.split()).await,
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
