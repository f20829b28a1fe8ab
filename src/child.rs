//! One child process: spawned in its own process group with a clean environment, signalled as a
//! group, and always reaped.
//!
//! Signals go to the whole group (`kill(-pgid)`), so background grandchildren (`tail -f &` in a
//! script) end with their parent; websocketd signals only the child and orphans them.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// How long a program gets after its stdin is closed, and then after each signal, before the
/// next step (websocketd's schedule); `--closems` is added to each of the first three.
const STEPS: [(Option<libc::c_int>, Duration); 4] = [
    (None, Duration::from_millis(100)),
    (Some(libc::SIGINT), Duration::from_millis(250)),
    (Some(libc::SIGTERM), Duration::from_millis(500)),
    (Some(libc::SIGKILL), Duration::from_millis(1000)),
];

/// A running program and the pipes to it.
pub struct ChildProcess {
    child: Child,
    pid: u32,
    /// Set once `wait` has returned: the pid is then no longer ours to signal.
    reaped: bool,
    /// Counts the program as running until it is reaped.
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
        use std::os::unix::process::ExitStatusExt;
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

impl ChildProcess {
    /// Starts `program` with exactly `env`, in a new process group, with all three stdio piped.
    pub fn spawn(
        program: &Path,
        args: &[OsString],
        env: Vec<(OsString, OsString)>,
    ) -> io::Result<ChildProcess> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        // A script that is being written (or was just written by a process that has forked
        // since) fails with ETXTBSY for a moment: try again briefly before giving up.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2 << tries));
                }
                other => break other.inspect_err(|_| crate::metrics::spawn_failed())?,
            }
        };
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
        Ok(ChildProcess {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            pid,
            reaped: false,
            running: Some(crate::metrics::ChildRunning::start()),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the program to exit (cancel-safe).
    pub async fn wait(&mut self) -> io::Result<Exit> {
        let status = self.child.wait().await?;
        self.reaped = true;
        self.running = None;
        Ok(Exit(status))
    }

    /// Sends `sig` to the program's whole process group.
    fn signal_group(&self, sig: libc::c_int) {
        // The group id is the child's pid (process_group(0)); the pid stays reserved as a
        // group id while any member lives, so this cannot reach an unrelated process.
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
    /// the group; tokio reaps the dropped child in the background.
    fn drop(&mut self) {
        if !self.reaped {
            self.signal_group(libc::SIGKILL);
        }
    }
}
