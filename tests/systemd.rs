//! systemd: socket activation (inherited listening sockets, by hand and through Debian's
//! `systemd-socket-activate`), sd_notify readiness, stopping and watchdog on a NOTIFY_SOCKET,
//! and the shipped unit files, checked by `systemd-analyze verify`.
mod common;
use common::*;

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECS5: Duration = Duration::from_secs(5);
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

/// A program that reports what it inherited: LISTEN_* (through --passenv, which would pass
/// them if wsd left them set) and the targets of its open descriptors.
const REPORTER: &str = r#"echo "listen=[$LISTEN_PID/$LISTEN_FDS/$LISTEN_FDNAMES]"
for f in /proc/$$/fd/*; do readlink "$f"; done | tr '\n' ' '; echo"#;

/// `sh -c` with this script, then wsd's path and arguments, runs wsd with LISTEN_PID set to
/// wsd's own pid (the shell's, which `exec` keeps).
const ACTIVATE_BY_HAND: &str = r#"LISTEN_PID=$$ LISTEN_FDS=$WSD_TEST_FDS exec "$@""#;

/// Starts wsd through `sh` with `listener` as descriptor 3 and the socket activation variables
/// set, as systemd does. `args` are wsd's flags and COMMAND.
fn start_activated(listener: &TcpListener, args: &[&str]) -> Wsd {
    let port = listener.local_addr().unwrap().port();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(ACTIVATE_BY_HAND)
        .arg("sh")
        .arg(wsd_bin())
        .args(args)
        .env("WSD_TEST_FDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only dup2 and fcntl run between fork and exec, both async-signal-safe.
    unsafe {
        cmd.pre_exec(move || pass_as_fd3(fd));
    }
    let wsd = Wsd::spawn(cmd, port);
    wait_for_log(&wsd, "Starting WebSocket server");
    wsd
}

/// Makes `fd` the child's descriptor 3, open across exec.
fn pass_as_fd3(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: plain descriptor calls on descriptors this process owns.
    unsafe {
        if fd == 3 {
            let flags = libc::fcntl(3, libc::F_GETFD);
            if flags == -1 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, 3) == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn wait_for_log(wsd: &Wsd, needle: &str) {
    assert!(
        wsd.wait_log(needle, Duration::from_secs(10)).is_some(),
        "no {needle:?} in the log; stdout: {:?} stderr: {:?}",
        wsd.stdout(),
        wsd.stderr()
    );
}

/// The target of one of a process's descriptors (`socket:[12345]`).
fn fd_target(pid: u32, fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads everything the reporter program printed: (LISTEN_* line, descriptor targets).
async fn report(port: u16) -> (String, String) {
    let mut c = Client::connect(format!("ws://127.0.0.1:{port}/")).await;
    let (lines, close) = c.read_to_close(SECS5).await;
    assert_eq!(close.map(|c| c.0), Some(1000), "reporter output: {lines:?}");
    assert_eq!(lines.len(), 2, "reporter output: {lines:?}");
    (lines[0].clone(), lines[1].clone())
}

#[tokio::test]
async fn an_inherited_socket_is_served_instead_of_binding_the_port() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let unused = free_port();
    let port_flag = format!("--port={unused}");
    let wsd = start_activated(
        &listener,
        &[
            &port_flag,
            "--address=127.0.0.1",
            "--passenv=PATH,LISTEN_PID,LISTEN_FDS,LISTEN_FDNAMES",
            "/bin/sh",
            "-c",
            REPORTER,
        ],
    );
    let inherited = fd_target(wsd.pid(), 3);
    assert!(inherited.starts_with("socket:"), "fd 3 is {inherited:?}");

    let (listen_vars, program_fds) = report(wsd.port).await;
    assert_eq!(
        listen_vars, "listen=[//]",
        "the program must not inherit the activation variables"
    );
    assert!(
        !program_fds.contains(&inherited),
        "the program inherited the listening socket {inherited}: {program_fds}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", unused)).is_err(),
        "--port must not be bound under socket activation"
    );
    assert!(wsd.wait_log("1 inherited sockets", SECS5).is_some());
}

#[tokio::test]
async fn activation_variables_meant_for_another_process_are_ignored() {
    let wsd = Wsd::start_with(&["/bin/sh", "-c", REPORTER], |cmd| {
        cmd.env("LISTEN_PID", "1").env("LISTEN_FDS", "1");
    });
    // wsd bound --port itself (Wsd::start waited for it) and served it.
    let (listen_vars, _) = report(wsd.port).await;
    assert_eq!(listen_vars, "listen=[//]");
}

#[tokio::test]
async fn several_sockets_from_systemd_socket_activate_are_all_served() {
    if !Path::new(SOCKET_ACTIVATE).exists() {
        println!("skipped: {SOCKET_ACTIVATE} is not installed (Debian package systemd)");
        return;
    }
    let dir = TempDir::new("activate");
    let sock = dir.path().join("wsd.sock");
    let (a, b) = (free_port(), free_port());
    let mut cmd = Command::new(SOCKET_ACTIVATE);
    cmd.arg(format!("--listen=127.0.0.1:{a}"))
        .arg(format!("--listen=127.0.0.1:{b}"))
        .arg(format!("--listen={}", sock.display()))
        .arg("--fdname=one:two:three")
        .arg(wsd_bin())
        .args(["--port=1", "--loglevel=info", "/bin/cat"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let wsd = Wsd::spawn(cmd, a);
    assert!(
        wait_until(SECS5, || sock.exists()
            && std::net::TcpStream::connect(("127.0.0.1", b)).is_ok()),
        "systemd-socket-activate did not listen; stderr: {:?}",
        wsd.stderr()
    );
    // The first connection makes systemd-socket-activate exec wsd (same pid) with the sockets.
    for port in [a, b] {
        let mut c = Client::connect(format!("ws://127.0.0.1:{port}/")).await;
        c.send_text(&format!("via {port}")).await;
        assert_eq!(c.recv_text().await, format!("via {port}"));
        c.close().await;
    }
    wait_for_log(&wsd, "3 inherited sockets");
    let mut unix = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    unix.set_read_timeout(Some(SECS5)).unwrap();
    use std::io::{Read, Write};
    unix.write_all(&upgrade_request("/", "")).unwrap();
    let mut head = [0u8; 12];
    unix.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101", "the Unix socket is served too");
    assert!(
        wsd.stdout()
            .iter()
            .any(|l| l.contains(&format!("ws://127.0.0.1:{b}/"))),
        "{:?}",
        wsd.stdout()
    );
}

/// A NOTIFY_SOCKET the test listens on: a path, or an abstract name (`@...`).
struct NotifySocket {
    socket: UnixDatagram,
    /// The value for NOTIFY_SOCKET.
    name: String,
    _dir: TempDir,
}

impl NotifySocket {
    fn path() -> NotifySocket {
        let dir = TempDir::new("notify");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            name: path.to_string_lossy().into_owned(),
            _dir: dir,
        }
    }

    fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wsd-test-notify-{}-{}", std::process::id(), free_port());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        NotifySocket {
            socket,
            name: format!("@{name}"),
            _dir: TempDir::new("notify-unused"),
        }
    }

    /// The next notification, or None after `within`.
    fn recv(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for a notification containing `needle`; all notifications seen, in order.
    fn wait_for(&self, needle: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left.max(Duration::from_millis(1))) {
                Some(msg) => {
                    let done = msg.contains(needle);
                    seen.push(msg);
                    if done {
                        break;
                    }
                }
                None => break,
            }
        }
        seen
    }
}

/// Starts wsd with the notification environment, without waiting for it to listen.
fn start_notifying(notify: &NotifySocket, env: &[(&str, &str)]) -> Wsd {
    let port = free_port();
    let mut cmd = Command::new(wsd_bin());
    cmd.arg(format!("--port={port}"))
        .args(["--address=127.0.0.1", "/bin/cat"])
        .env("NOTIFY_SOCKET", &notify.name)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Wsd::spawn(cmd, port)
}

#[tokio::test]
async fn ready_is_notified_once_listening_and_stopping_at_shutdown() {
    let notify = NotifySocket::path();
    let mut wsd = start_notifying(&notify, &[]);
    let ready = notify
        .recv(Duration::from_secs(10))
        .expect("a notification");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS="), "{ready:?}");
    // READY=1 means the port is already open.
    let mut c = wsd.connect("/").await;
    c.send_text("up").await;
    assert_eq!(c.recv_text().await, "up");

    wsd.signal(libc::SIGTERM);
    let seen = notify.wait_for("STOPPING=1", SECS5);
    assert!(
        seen.last()
            .is_some_and(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{seen:?}"
    );
    assert_eq!(
        c.next_event(SECS5).await,
        Event::Close(Some((1001, "server shutting down".into())))
    );
    assert_eq!(wsd.wait_exit(SECS5).and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn an_abstract_notify_socket_gets_the_notifications() {
    let notify = NotifySocket::abstract_name();
    let wsd = start_notifying(&notify, &[]);
    let ready = notify
        .recv(Duration::from_secs(10))
        .expect("a notification");
    assert!(ready.starts_with("READY=1"), "{ready:?}");
    drop(wsd);
}

#[tokio::test]
async fn the_watchdog_is_fed_at_half_its_interval() {
    let notify = NotifySocket::path();
    let wsd = start_notifying(&notify, &[("WATCHDOG_USEC", "200000")]);
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(2) && pings < 5 {
        if let Some(msg) = notify.recv(Duration::from_secs(1)) {
            pings += msg.lines().filter(|l| *l == "WATCHDOG=1").count();
        }
    }
    assert!(pings >= 5, "{pings} WATCHDOG=1 in {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "5 pings at 100 ms took {:?}",
        started.elapsed()
    );
    drop(wsd);
}

#[tokio::test]
async fn a_watchdog_meant_for_another_process_is_not_fed() {
    let notify = NotifySocket::path();
    let wsd = start_notifying(
        &notify,
        &[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    );
    let ready = notify.recv(Duration::from_secs(10)).expect("READY=1");
    assert!(ready.starts_with("READY=1"), "{ready:?}");
    assert_eq!(notify.recv(Duration::from_millis(500)), None);
    drop(wsd);
}

/// The unit files as shipped, with ExecStart pointing at the built binary and a program that
/// exists, so that `systemd-analyze verify` checks everything it can.
#[test]
fn the_unit_files_pass_systemd_analyze_verify_without_warnings() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd");
    let service = std::fs::read_to_string(units.join("wsd.service")).unwrap();
    let socket = std::fs::read_to_string(units.join("wsd.socket")).unwrap();
    for hardening in [
        "Type=notify",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "KillMode=mixed",
        "WatchdogSec=",
    ] {
        assert!(
            service.lines().any(|l| l.starts_with(hardening)),
            "wsd.service lacks {hardening}"
        );
    }
    assert!(socket.lines().any(|l| l.starts_with("ListenStream=")));
    if !Path::new(SYSTEMD_ANALYZE).exists() {
        println!(
            "skipped systemd-analyze: {SYSTEMD_ANALYZE} is not installed (Debian package systemd)"
        );
        return;
    }
    let dir = TempDir::new("units");
    let service = service
        .replace("/usr/local/bin/wsd", wsd_bin())
        .replace("/usr/local/lib/wsd/handler", "/bin/cat");
    std::fs::write(dir.path().join("wsd.service"), service).unwrap();
    std::fs::write(dir.path().join("wsd.socket"), socket).unwrap();
    let out = Command::new(SYSTEMD_ANALYZE)
        .args(["verify", "--man=no"])
        .arg(dir.path().join("wsd.service"))
        .arg(dir.path().join("wsd.socket"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    let about_ours: Vec<&str> = said.lines().filter(|l| l.contains("wsd.s")).collect();
    assert!(about_ours.is_empty(), "systemd-analyze verify: {said}");
}
