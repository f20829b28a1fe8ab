//! One child process: spawned in its own process group with a clean environment, signalled as a
//! group, and always reaped.
//!
//! Signals go to the whole group (`kill(-pgid)`), so background grandchildren (`tail -f &` in a
//! script) end with their parent; websocketd signals only the child and orphans them.
//!
//! Spawning is one `posix_spawn` (a `vfork`-style clone: the parent's memory is not copied)
//! with three pipes, and reaping is one process-wide [`Reaper`] driven by SIGCHLD, rather than
//! `tokio::process`, which opens a pidfd per child: that is a fifth descriptor per connection
//! (wsd would run out of descriptors a fifth sooner than with four) and a registration with
//! the event loop, a `pidfd_open` and a `close` per connection.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;

use crate::cgi_env::Environment;

/// How long a program gets after its stdin is closed, and then after each signal, before the
/// next step (websocketd's schedule); `--closems` is added to each of the first three.
const STEPS: [(Option<libc::c_int>, Duration); 4] = [
    (None, Duration::from_millis(100)),
    (Some(libc::SIGINT), Duration::from_millis(250)),
    (Some(libc::SIGTERM), Duration::from_millis(500)),
    (Some(libc::SIGKILL), Duration::from_millis(1000)),
];

/// wsd's end of the program's stdin.
pub type ChildStdin = pipe::Sender;
/// wsd's end of the program's stdout. A [`pipe::Receiver`] can be waited on for data without
/// a buffer (`readable`), so that an idle connection holds no read buffer.
pub type ChildStdout = pipe::Receiver;
/// wsd's end of the program's stderr.
pub type ChildStderr = pipe::Receiver;

/// A running program and the pipes to it.
pub struct ChildProcess {
    pid: u32,
    /// The exit status, from the reaper, once the program has exited.
    status: oneshot::Receiver<ExitStatus>,
    /// Set once `wait` has returned: the pid is then no longer ours to signal.
    exit: Option<Exit>,
    /// Counts the program as running (`--metrics`) until it is reaped.
    running: Option<crate::metrics::ChildRunning>,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// How the program ended, as reported to the client and the log.
#[derive(Debug, Clone, Copy)]
pub struct Exit(pub ExitStatus);

impl Exit {
    pub fn success(&self) -> bool {
        self.0.success()
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.0.code(), self.0.signal()) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {sig} ({})", signal_name(sig)),
            _ => write!(f, "{}", self.0),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Sleeps for `pause` in a synchronous caller on a runtime worker. On the multi-thread
/// runtime tokio first hands the worker's other tasks to another thread, so that the other
/// connections do not stall with it.
fn pause_worker(pause: Duration) {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(|| std::thread::sleep(pause));
    } else {
        std::thread::sleep(pause);
    }
}

impl ChildProcess {
    /// Starts `program` with exactly `env`, in a new process group, with all three stdio piped.
    ///
    /// As with `std::process::Command` (`env_clear().envs(env)`), the environment is sorted by
    /// name and a name given twice keeps its last value.
    pub fn spawn(program: &Path, args: &[OsString], env: Environment) -> io::Result<ChildProcess> {
        let reaper = Reaper::get()?;
        let program = cstring(program.as_os_str().as_bytes())?;
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(program.clone());
        for a in args {
            argv.push(cstring(a.as_bytes())?);
        }
        let envp = env.pointers()?;
        let Pipe {
            read: child_stdin,
            write: stdin,
        } = Pipe::new()?;
        let Pipe {
            read: stdout,
            write: child_stdout,
        } = Pipe::new()?;
        let Pipe {
            read: stderr,
            write: child_stderr,
        } = Pipe::new()?;
        // A script that is being written (or was just written by a process that has forked
        // since) fails with ETXTBSY for a moment: try again briefly before giving up.
        let mut tries = 0;
        let pid = loop {
            match spawn::posix_spawn(
                &program,
                &argv,
                &envp,
                [&child_stdin, &child_stdout, &child_stderr],
            ) {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                    tries += 1;
                    pause_worker(Duration::from_millis(2 << tries));
                }
                other => break other.inspect_err(|_| crate::metrics::spawn_failed())?,
            }
        };
        // Only the child may hold these: its output ends when it closes them.
        drop((child_stdin, child_stdout, child_stderr));
        let status = reaper.register(pid);
        Ok(ChildProcess {
            pid,
            status,
            exit: None,
            running: Some(crate::metrics::ChildRunning::start()),
            stdin: Some(ChildStdin::from_owned_fd_unchecked(nonblocking(stdin)?)?),
            stdout: Some(ChildStdout::from_owned_fd_unchecked(nonblocking(stdout)?)?),
            stderr: Some(ChildStderr::from_owned_fd_unchecked(nonblocking(stderr)?)?),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the program to exit (cancel-safe; after the first return, at once).
    pub async fn wait(&mut self) -> io::Result<Exit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let status = (&mut self.status)
            .await
            .map_err(|_| io::Error::other("the reaper of child processes has stopped"))?;
        let exit = Exit(status);
        self.exit = Some(exit);
        self.running = None;
        Ok(exit)
    }

    /// Whether the program has exited and been reaped (its status taken, if it has come).
    fn reaped(&mut self) -> bool {
        if self.exit.is_none() {
            if let Ok(status) = self.status.try_recv() {
                self.exit = Some(Exit(status));
                self.running = None;
            }
        }
        self.exit.is_some()
    }

    /// Sends `sig` to the program's whole process group.
    fn signal_group(&self, sig: libc::c_int) {
        // The group id is the child's pid (POSIX_SPAWN_SETPGROUP with 0); the pid stays
        // reserved as a group id while any member lives, so this cannot reach an unrelated
        // process.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-(self.pid as libc::pid_t), sig);
        }
    }

    /// Ends the program: closes its stdin, then SIGINT, SIGTERM and SIGKILL to its process group,
    /// each after a grace period (plus `extra`), until it exits; reaps it; and finally kills
    /// whatever is left of its group (background grandchildren). Returns how it ended.
    pub async fn terminate(&mut self, extra: Duration) -> Option<Exit> {
        self.stdin = None;
        let mut exit = None;
        for (sig, wait) in STEPS {
            if let Some(sig) = sig {
                if self.reaped() {
                    // Exited since the last wait: its group is signalled below if need be.
                    exit = self.exit;
                    break;
                }
                crate::debug!(
                    "process",
                    "sending {} to process group {}",
                    signal_name(sig),
                    self.pid
                );
                self.signal_group(sig);
            }
            let grace = if sig == Some(libc::SIGKILL) {
                wait
            } else {
                wait + extra
            };
            if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
                exit = status.ok();
                break;
            }
        }
        if exit.is_none() {
            crate::error!("process", "SIGKILL did not terminate {}!", self.pid);
        }
        self.kill_leftovers();
        exit
    }

    /// After the program has exited by itself: kills what is left of its process group.
    pub fn kill_leftovers(&self) {
        self.signal_group(libc::SIGKILL);
    }
}

impl Drop for ChildProcess {
    /// A session that ends abnormally (a panic, say) must not leave its program running: kill
    /// the group; the reaper reaps the child when it has died.
    fn drop(&mut self) {
        if !self.reaped() {
            self.signal_group(libc::SIGKILL);
        }
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

/// wsd's end of a pipe, made non-blocking (the child's end stays blocking, as programs expect).
fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own. A new pipe end has no status flags but its access
    // mode, which F_SETFL leaves alone.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Both ends of a pipe, closed on exec (the child gets its ends through `dup2`, which clears
/// the flag on the copy).
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array, which then belong to us alone.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            })
        }
    }
}

/// The one `posix_spawn` call, with its attribute and file-action objects.
mod spawn {
    use super::*;

    /// Owns an initialised `posix_spawnattr_t`.
    struct Attr(libc::posix_spawnattr_t);

    impl Drop for Attr {
        fn drop(&mut self) {
            // SAFETY: initialised in `posix_spawn` below before this value was made.
            unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
        }
    }

    /// Owns an initialised `posix_spawn_file_actions_t`.
    struct Actions(libc::posix_spawn_file_actions_t);

    impl Drop for Actions {
        fn drop(&mut self) {
            // SAFETY: initialised in `posix_spawn` below before this value was made.
            unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
        }
    }

    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }

    fn pointers(strings: &[CString]) -> Vec<*mut libc::c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect()
    }

    /// Starts `program` (a path, not searched for in PATH) with the environment `envp` (a
    /// null-terminated array, see [`Environment::pointers`]) and `stdio` as its descriptors 0,
    /// 1 and 2, in a process group of its own, with an empty signal mask and SIGPIPE at its
    /// default action (wsd ignores it, as every Rust program does, and ignored signals stay
    /// ignored across exec): what `std::process::Command` sets up too.
    pub(super) fn posix_spawn(
        program: &CString,
        argv: &[CString],
        envp: &[*const libc::c_char],
        stdio: [&OwnedFd; 3],
    ) -> io::Result<u32> {
        let argv = pointers(argv);
        // SAFETY: the attribute and file-action objects are initialised before use and
        // destroyed once (by their owners' Drop); every pointer passed to posix_spawn is to a
        // NUL-terminated string or a null-terminated array of them that outlives the call; the
        // descriptors are open (borrowed from their owners for the call). The standard
        // descriptors 0-2 of wsd itself are always open (Rust's runtime opens /dev/null for
        // any that are not), so the pipes' descriptors are above 2 and no dup2 below
        // overwrites another's source.
        unsafe {
            let mut attr = std::mem::zeroed::<libc::posix_spawnattr_t>();
            check(libc::posix_spawnattr_init(&mut attr))?;
            let mut attr = Attr(attr);
            let mut actions = std::mem::zeroed::<libc::posix_spawn_file_actions_t>();
            check(libc::posix_spawn_file_actions_init(&mut actions))?;
            let mut actions = Actions(actions);

            let mut empty = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut empty);
            check(libc::posix_spawnattr_setsigmask(&mut attr.0, &empty))?;
            let mut default = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut default);
            libc::sigaddset(&mut default, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigdefault(&mut attr.0, &default))?;
            check(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                &mut attr.0,
                flags as libc::c_short,
            ))?;
            for (target, fd) in stdio.iter().enumerate() {
                check(libc::posix_spawn_file_actions_adddup2(
                    &mut actions.0,
                    fd.as_raw_fd(),
                    target as libc::c_int,
                ))?;
            }

            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions.0,
                &attr.0,
                argv.as_ptr(),
                envp.as_ptr().cast(),
            ))?;
            Ok(pid as u32)
        }
    }
}

/// Reaps every child of wsd as it exits and hands each exit status to the [`ChildProcess`]
/// that waits for it.
///
/// One task for the whole process: on SIGCHLD it collects every exited child with
/// `waitpid(-1, WNOHANG)` and sends each status through the child's channel, so an exit
/// costs one lookup, however many children run, and no descriptor. All of wsd's children are
/// started by [`ChildProcess::spawn`]: reaping any child is reaping one of ours.
struct Reaper {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Running children, by pid.
    waiting: HashMap<u32, oneshot::Sender<ExitStatus>>,
    /// Children reaped before they were registered (they exited at once, and SIGCHLD was
    /// handled between `posix_spawn` returning and `register`).
    early: HashMap<u32, ExitStatus>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

impl Reaper {
    /// The reaper, started on first use. SIGCHLD is being listened for before this returns,
    /// so no exit of a child spawned afterwards goes unnoticed.
    fn get() -> io::Result<&'static Reaper> {
        if let Some(r) = REAPER.get() {
            return Ok(r);
        }
        let sigchld = signal(SignalKind::child())?;
        let mut first = false;
        let reaper = REAPER.get_or_init(|| {
            first = true;
            Reaper {
                table: Mutex::new(Table::default()),
            }
        });
        if first {
            // Runs as long as the runtime: reaping is a service of the process, not of a
            // connection, and there is nothing to stop.
            tokio::spawn(reaper.run(sigchld));
        }
        Ok(reaper)
    }

    async fn run(&'static self, mut sigchld: Signal) {
        loop {
            self.reap();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel `pid`'s exit status will come through.
    fn register(&self, pid: u32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut table = self.lock();
        match table.early.remove(&pid) {
            Some(status) => {
                let _ = tx.send(status);
            }
            None => {
                table.waiting.insert(pid, tx);
            }
        }
        rx
    }

    /// Collects every child that has exited. SIGCHLDs arriving together are delivered as one,
    /// so this takes all there are, not one per signal.
    fn reap(&self) {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid writes the status into a local.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // 0: children run, none has exited; -1 (ECHILD): there are none.
            if pid <= 0 {
                return;
            }
            let status = ExitStatus::from_raw(raw);
            let mut table = self.lock();
            match table.waiting.remove(&(pid as u32)) {
                // The receiver is gone if its ChildProcess was dropped: nothing to tell.
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    table.early.insert(pid as u32, status);
                }
            }
        }
    }
}

/// Blocks SIGCHLD in the calling thread (the main thread, which only waits on the runtime), so
/// that the kernel delivers it to a runtime worker, which is awake anyway or wakes for the
/// reaper: otherwise the main thread would be woken for each child's exit, only to pass the
/// signal on to a worker.
pub fn leave_sigchld_to_the_workers() {
    // SAFETY: a sigset_t on the stack, initialised by sigemptyset; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
