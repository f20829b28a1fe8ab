//! systemd: socket activation and `sd_notify`, by hand (a few system calls; no libsystemd).
//!
//! **Socket activation.** systemd (or `systemd-socket-activate`) opens the listening sockets
//! itself and starts wsd with them as descriptors 3, 4, ..., announced by `LISTEN_FDS=N` and
//! `LISTEN_PID` (which must be wsd's own pid: the variables may have been inherited by
//! mistake). wsd then serves those sockets instead of binding `--port`/`--address`; their
//! names (`LISTEN_FDNAMES`) are ignored. The variables are unset once read, and the descriptors
//! marked close-on-exec, so the programs wsd starts inherit neither.
//!
//! **Notification.** With `NOTIFY_SOCKET` set (`Type=notify`), wsd sends `READY=1` once every
//! listener is open, `STOPPING=1` when a shutdown begins, and, with `WATCHDOG_USEC` set
//! (`WatchdogSec=`), `WATCHDOG=1` at half that interval for as long as its runtime is
//! responsive. Notifications are datagrams on a Unix socket; a name starting with `@` is an
//! abstract socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// What [`claim_listen_fds`] found, kept for [`take_listeners`].
static CLAIMED: Mutex<Claimed> = Mutex::new(Claimed {
    fds: Vec::new(),
    notes: Vec::new(),
});

struct Claimed {
    fds: Vec<OwnedFd>,
    /// What to log once logging is set up (claiming comes first), and whether it is an error.
    notes: Vec<(bool, String)>,
}

/// An inherited listening socket.
pub enum Inherited {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Takes the descriptors systemd passed, if the variables are meant for this process, and
/// unsets the variables. Call first thing: before any other thread exists (it changes the
/// environment), and before `--passenv` copies the environment.
pub fn claim_listen_fds() {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return;
    };
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        claimed.notes.push((
            false,
            format!("LISTEN_PID={pid} is not this process: no socket activation"),
        ));
        return;
    }
    let Ok(count) = count.trim().parse::<RawFd>() else {
        claimed.notes.push((
            true,
            format!("LISTEN_FDS={count} is not a number: no socket activation"),
        ));
        return;
    };
    for fd in LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count.max(0)) {
        // SAFETY: fcntl on a descriptor number has no memory-safety preconditions; F_GETFD
        // tells whether it is open before it is adopted.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        if !open {
            claimed.notes.push((
                true,
                format!("LISTEN_FDS={count}, but descriptor {fd} is not open"),
            ));
            continue;
        }
        // SAFETY: as above; the flag keeps the socket from the programs wsd starts.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the descriptor is open, and LISTEN_PID says it was passed to this process
        // for it to own; nothing else in wsd refers to descriptors by number.
        claimed.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// The claimed sockets as listeners (empty without socket activation). A socket that is not a
/// listening stream socket (say, from `Accept=yes`) is an error.
pub fn take_listeners() -> Result<Vec<Inherited>, String> {
    let (fds, notes) = {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut claimed.fds),
            std::mem::take(&mut claimed.notes),
        )
    };
    for (is_error, note) in notes {
        if is_error {
            crate::error!("server", "{note}");
        } else {
            crate::debug!("server", "{note}");
        }
    }
    if !fds.is_empty() {
        crate::info!(
            "server",
            "Socket activation           : {} inherited sockets (--port and --address are not used)",
            fds.len()
        );
    }
    fds.into_iter().map(listener).collect()
}

fn listener(fd: OwnedFd) -> Result<Inherited, String> {
    let raw = fd.as_raw_fd();
    let bad = |what: &str| format!("inherited descriptor {raw} {what}");
    if sockopt(raw, libc::SO_TYPE).map_err(|e| bad(&format!("is not a socket: {e}")))?
        != libc::SOCK_STREAM
    {
        return Err(bad("is not a stream socket (use ListenStream=)"));
    }
    if sockopt(raw, libc::SO_ACCEPTCONN).map_err(|e| bad(&e.to_string()))? == 0 {
        return Err(bad("is not listening (use Accept=no)"));
    }
    let listener = match sockopt(raw, libc::SO_DOMAIN).map_err(|e| bad(&e.to_string()))? {
        libc::AF_INET | libc::AF_INET6 => Inherited::Tcp(fd.into()),
        libc::AF_UNIX => Inherited::Unix(fd.into()),
        other => return Err(bad(&format!("has an unsupported address family {other}"))),
    };
    let nonblocking = match &listener {
        Inherited::Tcp(l) => l.set_nonblocking(true),
        Inherited::Unix(l) => l.set_nonblocking(true),
    };
    nonblocking.map_err(|e| bad(&e.to_string()))?;
    Ok(listener)
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `state` (`READY=1`, ...) to the service manager; nothing without `NOTIFY_SOCKET`.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notification(&path, state) {
        crate::error!(
            "server",
            "cannot notify systemd at {}: {e}",
            path.to_string_lossy()
        );
    }
}

fn send_notification(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if it is set for this process.
fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// Tells systemd that wsd is ready, and keeps its watchdog fed until `stop` is cancelled.
pub fn ready(status: &str, stop: CancellationToken) -> Option<JoinHandle<()>> {
    notify(&format!("READY=1\nSTATUS={status}"));
    let every = watchdog_interval()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => notify("WATCHDOG=1"),
            }
        }
    }))
}

/// Tells systemd that wsd is shutting down.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=Shutting down");
}
