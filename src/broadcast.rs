//! `--broadcast`: one program per route, shared by every client of that route.
//!
//! A [`Hub`] owns the program. Its output pump cuts stdout into messages, numbers them, keeps
//! the last `--replay` of them, and offers each to every subscriber's queue (`--send-queue`
//! messages). A subscriber whose queue is full is kicked (closed with 1013) rather than
//! slowing the others or growing memory. Subscribing and fanning out take the same lock, so a
//! new subscriber's replay and its live stream meet without a gap or a duplicate.
//!
//! Client messages from every subscriber go through one queue to one stdin writer, whole
//! lines at a time. When the last subscriber leaves, the program is stopped after
//! `--linger-ms` (never with -1). When the program exits, every subscriber's queue is closed
//! after its last message and each gets the program's close frame; the next client starts a
//! fresh program.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cgi_env::Environment;
use crate::child::{ChildProcess, Exit};
use crate::config::{Config, Linger};
use crate::session::{self, Encoder, StdinItem};

/// Client messages from all subscribers waiting for the shared stdin.
const STDIN_QUEUE: usize = 64;
/// How long the output pump keeps reading after the program exited (as in a session).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);

/// A numbered output message; the number is the SSE event id.
pub type Item = (u64, Message);

/// A route's identity: the program and its arguments.
type RouteKey = (PathBuf, Vec<OsString>);

/// Every running hub, by route.
pub struct Hubs {
    config: Arc<Config>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    hubs: Mutex<HashMap<RouteKey, Arc<Hub>>>,
    next_subscriber: std::sync::atomic::AtomicU64,
}

/// Why a subscription could not be made.
pub enum SubscribeError {
    /// `--maxforks` programs are running.
    NoFork,
    /// The program could not be started.
    Spawn(std::io::Error),
}

impl Hubs {
    pub fn new(config: Arc<Config>, shutdown: CancellationToken, tracker: TaskTracker) -> Hubs {
        Hubs {
            config,
            shutdown,
            tracker,
            hubs: Mutex::new(HashMap::new()),
            next_subscriber: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Joins the route's hub, starting its program (with `env`, the first client's
    /// environment) if none runs. `last_seen` is an SSE client's Last-Event-ID: the replay
    /// then holds only what came after it.
    pub fn subscribe(
        self: &Arc<Self>,
        program: &std::path::Path,
        args: &[OsString],
        env: impl FnOnce() -> Environment,
        fork: impl FnOnce() -> Option<Option<OwnedSemaphorePermit>>,
        last_seen: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        let key = (program.to_path_buf(), args.to_vec());
        let id = self
            .next_subscriber
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut start = Some((env, fork));
        loop {
            let hub = {
                let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
                match hubs.get(&key) {
                    Some(hub) if hub.is_live() => hub.clone(),
                    _ => {
                        // A hub that is stopping is replaced; it removes itself only if it is
                        // still the registered one.
                        let (env, fork) = start.take().expect("a new hub is started at most once");
                        let permit = fork().ok_or(SubscribeError::NoFork)?;
                        let hub = self.start(key.clone(), env(), permit)?;
                        hubs.insert(key.clone(), hub.clone());
                        hub
                    }
                }
            };
            // None if the hub began stopping since: then start a fresh one.
            if let Some(sub) = hub.add(id, last_seen) {
                return Ok(sub);
            }
            if start.is_none() {
                // Only a hub started right here could be stopping already; give up on it.
                return Err(SubscribeError::Spawn(std::io::Error::other(
                    "the program ended at once",
                )));
            }
        }
    }

    /// Starts the program of `--linger-ms=-1` at server start, with an environment built
    /// without a request.
    pub fn start_at_boot(
        self: &Arc<Self>,
        program: &std::path::Path,
        args: &[OsString],
        env: Environment,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), std::io::Error> {
        let key = (program.to_path_buf(), args.to_vec());
        let hub = self.start(key.clone(), env, permit).map_err(|e| match e {
            SubscribeError::Spawn(e) => e,
            SubscribeError::NoFork => std::io::Error::other("no fork slot"),
        })?;
        self.hubs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, hub);
        Ok(())
    }

    fn start(
        self: &Arc<Self>,
        key: RouteKey,
        env: Environment,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Arc<Hub>, SubscribeError> {
        let mut child = ChildProcess::spawn(&key.0, &key.1, env).map_err(SubscribeError::Spawn)?;
        // Its own span, not the first client's: the program outlives that connection.
        let span = tracing::error_span!(target: "wsd", parent: None, "shared", command = %key.0.display(), pid = child.pid());
        span.in_scope(|| crate::info!("broadcast", "started the shared program"));
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let hub = Arc::new(Hub {
            pid: child.pid(),
            key,
            config: self.config.clone(),
            state: Mutex::new(HubState::default()),
            stdin_tx,
            stop: CancellationToken::new(),
            end: OnceLock::new(),
        });
        let stdin = child.stdin.take();
        let hubs = self.clone();
        let pump_hub = hub.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(
            async move {
                let stdin_task = stdin
                    .map(|s| tokio::spawn(session::write_stdin(s, stdin_rx).in_current_span()));
                let frame = pump_hub.run(&mut child, &shutdown).await;
                if let Some(task) = stdin_task {
                    task.abort();
                }
                hubs.remove(&pump_hub);
                pump_hub.finish(frame);
                drop(permit);
            }
            .instrument(span),
        );
        Ok(hub)
    }

    /// Forgets a hub (if it is still the one registered for its route).
    fn remove(&self, hub: &Arc<Hub>) {
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        if hubs.get(&hub.key).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(&hub.key);
        }
    }
}

/// One shared program and its subscribers.
pub struct Hub {
    pid: u32,
    key: RouteKey,
    config: Arc<Config>,
    state: Mutex<HubState>,
    stdin_tx: mpsc::Sender<StdinItem>,
    /// Cancelled to stop the program (the last subscriber left).
    stop: CancellationToken,
    /// The close frame every subscriber gets once the program has ended.
    end: OnceLock<CloseFrame>,
}

#[derive(Default)]
struct HubState {
    next_id: u64,
    replay: VecDeque<Item>,
    subscribers: HashMap<u64, Subscriber>,
    /// Bumped on every subscribe, so that a linger timer knows whether someone came back.
    generation: u64,
    ended: bool,
}

struct Subscriber {
    queue: mpsc::Sender<Item>,
    kicked: CancellationToken,
}

impl Hub {
    /// Neither ended nor stopping.
    fn is_live(&self) -> bool {
        !self.stop.is_cancelled() && !self.lock().ended
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(self: &Arc<Self>, id: u64, last_seen: Option<u64>) -> Option<Subscription> {
        let (tx, rx) = mpsc::channel(self.config.send_queue);
        let kicked = CancellationToken::new();
        let mut state = self.lock();
        // `leave` cancels `stop` under this lock, so this check cannot race it.
        if state.ended || self.stop.is_cancelled() {
            return None;
        }
        state.generation += 1;
        let replay = state
            .replay
            .iter()
            .filter(|(n, _)| last_seen.map_or(true, |seen| *n > seen))
            .cloned()
            .collect();
        state.subscribers.insert(
            id,
            Subscriber {
                queue: tx,
                kicked: kicked.clone(),
            },
        );
        Some(Subscription {
            id,
            hub: self.clone(),
            replay,
            rx,
            kicked,
        })
    }

    /// Numbers the messages, keeps the last `--replay`, and offers them to every subscriber.
    fn publish(&self, messages: Vec<Message>) {
        let mut state = self.lock();
        let state = &mut *state;
        for msg in messages {
            state.next_id += 1;
            let item = (state.next_id, msg);
            if self.config.replay > 0 {
                if state.replay.len() == self.config.replay {
                    state.replay.pop_front();
                }
                state.replay.push_back(item.clone());
            }
            state.subscribers.retain(|id, sub| match sub.queue.try_send(item.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    crate::access!(
                        "broadcast",
                        "subscriber {id} is {} messages behind (--send-queue): closing it with 1013",
                        self.config.send_queue
                    );
                    sub.kicked.cancel();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }

    /// A subscriber left; the last one starts the linger.
    fn leave(self: &Arc<Self>, id: u64) {
        let mut state = self.lock();
        state.subscribers.remove(&id);
        if !state.subscribers.is_empty() || state.ended {
            return;
        }
        match self.config.linger {
            Linger::Forever => {}
            Linger::For(d) if d.is_zero() => self.stop.cancel(),
            Linger::For(d) => {
                let generation = state.generation;
                let hub = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let state = hub.lock();
                    if state.generation == generation && state.subscribers.is_empty() {
                        hub.stop.cancel();
                    }
                });
            }
        }
    }

    /// Pumps the program's output to the subscribers until it ends or is stopped; returns the
    /// close frame for the subscribers.
    async fn run(&self, child: &mut ChildProcess, shutdown: &CancellationToken) -> CloseFrame {
        let config = &self.config;
        let mut stdout = child
            .stdout
            .take()
            .map(|out| crate::framing::Output::new(out, config.binary, config.max_line_bytes));
        let (stderr_tx, mut stderr_rx) = mpsc::channel::<String>(16);
        let stderr_task = child.stderr.take().map(|stderr| {
            let tx = config.pass_stderr.then_some(stderr_tx);
            tokio::spawn(session::pump_stderr(stderr, tx, config.max_line_bytes).in_current_span())
        });
        let mut encoder = Encoder::new(config);
        let mut exit: Option<Exit> = None;
        let drain = tokio::time::sleep(Duration::from_secs(86400));
        tokio::pin!(drain);
        let stopped = loop {
            if stdout.is_none() {
                break false;
            }
            tokio::select! {
                (payloads, ended) = async {
                    stdout.as_mut().expect("guarded by the loop condition").read().await
                } => {
                    if ended {
                        stdout = None;
                    }
                    self.publish(payloads.into_iter().map(|p| encoder.message(p)).collect());
                }
                Some(json) = stderr_rx.recv() => self.publish(vec![Message::Text(json.into())]),
                status = child.wait(), if exit.is_none() => {
                    exit = status.ok();
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                }
                _ = &mut drain, if exit.is_some() => break false,
                _ = self.stop.cancelled() => break true,
                _ = shutdown.cancelled() => break true,
            }
        };
        let exit = match exit {
            Some(exit) => {
                child.kill_leftovers();
                Some(exit)
            }
            None => child.terminate(config.close_grace).await,
        };
        if let Some(task) = stderr_task {
            let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
        }
        let shown = exit.map_or_else(|| "unknown".to_string(), |e| e.to_string());
        if stopped {
            crate::info!("broadcast", "stopped the shared program: {shown}");
        } else {
            crate::info!("broadcast", "the shared program ended: {shown}");
        }
        match exit {
            Some(e) if e.success() => session::close_frame(CloseCode::Normal, ""),
            Some(e) => session::close_frame(CloseCode::Error, &e.to_string()),
            None => session::close_frame(CloseCode::Error, "the program could not be reaped"),
        }
    }

    /// The program has ended: subscribers get what is queued, then `frame`.
    fn finish(&self, frame: CloseFrame) {
        let _ = self.end.set(frame);
        let mut state = self.lock();
        state.ended = true;
        // Dropping the senders ends each queue after its last message.
        state.subscribers.clear();
    }
}

/// One client's place in a hub; leaving the hub when dropped.
pub struct Subscription {
    id: u64,
    hub: Arc<Hub>,
    /// The last `--replay` messages, to send before the live stream.
    pub replay: Vec<Item>,
    /// The live stream; ends (None) when the program has ended.
    pub rx: mpsc::Receiver<Item>,
    /// Cancelled when this subscriber fell `--send-queue` messages behind.
    pub kicked: CancellationToken,
}

impl Subscription {
    /// Where client messages go: the shared program's stdin.
    pub(crate) fn stdin(&self) -> mpsc::Sender<StdinItem> {
        self.hub.stdin_tx.clone()
    }

    /// The close frame for the subscribers, once the program has ended.
    pub fn end_frame(&self) -> Option<CloseFrame> {
        self.hub.end.get().cloned()
    }

    /// The shared program's process id.
    pub fn pid(&self) -> u32 {
        self.hub.pid
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self.id);
    }
}
