//! Shared fixtures for the black-box tests: start the real `wsd` binary on a free loopback
//! port, read its log, talk WebSocket and raw HTTP to it, and inspect the process table.
//!
//! Every wait has a deadline; every process a test starts is killed by PID when the test ends.

#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The binary under test.
pub fn wsd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_wsd")
}

/// A free TCP port on 127.0.0.1, taken from below the kernel's ephemeral range so that no
/// outgoing connection of a test running in parallel is given it between this check and wsd's
/// bind (the ephemeral range is where `bind(0)` and every client socket draw their ports). Each
/// test binary starts at its own offset in the range and walks it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > FIRST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_low - FIRST;
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + start.wrapping_add(n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {ephemeral_low}");
}

/// TCP ports `pid` is listening on (from its socket inodes and /proc/net/tcp{,6}).
pub fn tcp_listen_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                if let Some(port) = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// True if process `pid` holds a socket listening on TCP `port`. Unlike a test connection, this
/// cannot be fooled by another test's server that happens to listen on the same port, nor by a
/// loopback connection that connects to itself.
pub fn listens_on(pid: u32, port: u16) -> bool {
    tcp_listen_ports(pid).contains(&port)
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wsd-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes an executable shell script and returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running wsd.
pub struct Wsd {
    pub child: Child,
    pub port: u16,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => into.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
}

impl Wsd {
    /// Starts wsd on a free port on 127.0.0.1 with `args` (flags, then COMMAND) and waits until
    /// it accepts connections.
    pub fn start(args: &[&str]) -> Wsd {
        Self::start_with(args, |_| {})
    }

    /// Like [`Wsd::start`], letting the caller adjust the command (environment, say). If the
    /// port was taken after all (wsd exits saying so), starts again on another.
    pub fn start_with(args: &[&str], adjust: impl Fn(&mut Command)) -> Wsd {
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(wsd_bin());
            cmd.arg(format!("--port={port}"))
                .arg("--address=127.0.0.1")
                .args(args);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            adjust(&mut cmd);
            let mut wsd = Self::spawn(cmd, port);
            if wsd.wait_listening(port) {
                return wsd;
            }
            let in_use = wsd.wait_exit(Duration::from_secs(1)).is_some()
                && wsd
                    .stderr()
                    .iter()
                    .chain(wsd.stdout().iter())
                    .any(|l| l.contains("in use"));
            assert!(
                in_use,
                "wsd did not start listening on {port}; stdout: {:?} stderr: {:?}",
                wsd.stdout(),
                wsd.stderr()
            );
        }
        panic!("three free ports in a row were taken before wsd could bind them");
    }

    /// Waits (up to 10 s) until this wsd holds a socket listening on `port`; false if it exits
    /// or the time runs out first.
    pub fn wait_listening(&self, port: u16) -> bool {
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if listens_on(pid, port) {
                return true;
            }
            if !alive(pid) || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`Wsd::wait_listening`], failing the test with wsd's output if it does not listen.
    pub fn assert_listening(&self, port: u16) {
        assert!(
            self.wait_listening(port),
            "wsd did not start listening on {port}; stdout: {:?} stderr: {:?}",
            self.stdout(),
            self.stderr()
        );
    }

    /// Spawns a prepared command (stdout and stderr must be piped) without waiting for it.
    pub fn spawn(mut cmd: Command, port: u16) -> Wsd {
        let mut child = cmd.spawn().expect("start wsd");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        Wsd {
            child,
            port,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stdout log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, within: Duration) -> Option<String> {
        let mut found = None;
        wait_until(within, || {
            found = self.stdout().into_iter().find(|l| l.contains(needle));
            found.is_some()
        });
        found
    }

    /// Number of stdout log lines containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.stdout().iter().filter(|l| l.contains(needle)).count()
    }

    /// Connects a WebSocket client to `path`.
    pub async fn connect(&self, path: &str) -> Client {
        Client::connect(&self.url(path)).await
    }

    /// Sends a signal to wsd.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for wsd to exit; its exit code, or None on timeout.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Wsd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs wsd with `args` and asserts the usage-error convention: exit code 2, nothing on stdout,
/// and exactly one line on stderr, ending in a newline, that contains every `needle`. Returns
/// that line for further checks.
pub fn assert_usage_error(args: &[&str], needles: &[&str]) -> String {
    let (code, stdout, stderr) = run_wsd(args);
    assert_eq!(code, 2, "{args:?}: stdout {stdout:?} stderr {stderr:?}");
    assert_eq!(stdout, "", "{args:?}");
    assert!(
        stderr.ends_with('\n'),
        "{args:?}: stderr should end in a newline: {stderr:?}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: stderr should be exactly one line: {stderr:?}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr should name {needle}: {stderr:?}"
        );
    }
    stderr
}

/// Runs wsd to completion with `args` (for flag errors, --version, ...): (exit code, stdout, stderr).
pub fn run_wsd(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(wsd_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), out, err);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsd {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the client saw next.
#[derive(Debug, PartialEq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame with its code and reason.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame.
    Eof,
    /// Nothing arrived in time.
    Timeout,
}

/// A WebSocket client (tokio-tungstenite), reading with deadlines.
pub struct Client {
    pub ws: WsStream,
}

impl Client {
    /// Connects to a URL, or to a prepared request (with extra headers, say).
    pub async fn connect<R>(request: R) -> Client
    where
        R: tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .expect("handshake in time")
        .expect("handshake succeeds");
        Client { ws }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws
            .send(Message::Binary(data.to_vec().into()))
            .await
            .expect("send");
    }

    /// The next data message or close, skipping pings and pongs.
    pub async fn next_event(&mut self, within: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Event::Timeout,
                Ok(None) => return Event::Eof,
                Ok(Some(Err(_))) => return Event::Eof,
                Ok(Some(Ok(msg))) => match msg {
                    Message::Text(t) => return Event::Text(t.to_string()),
                    Message::Binary(b) => return Event::Binary(b.to_vec()),
                    Message::Close(frame) => {
                        return Event::Close(
                            frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                        )
                    }
                    _ => continue,
                },
            }
        }
    }

    /// The next text message; panics on anything else.
    pub async fn recv_text(&mut self) -> String {
        match self.next_event(Duration::from_secs(5)).await {
            Event::Text(t) => t,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Reads until a close frame arrives; returns the messages before it and the close code.
    pub async fn read_to_close(
        &mut self,
        within: Duration,
    ) -> (Vec<String>, Option<(u16, String)>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut texts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Text(t) => texts.push(t),
                Event::Binary(b) => texts.push(String::from_utf8_lossy(&b).into_owned()),
                Event::Close(c) => return (texts, c),
                other => panic!("expected a close frame, got {other:?} after {texts:?}"),
            }
        }
    }

    /// Sends a close frame and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Sends raw bytes over TCP and returns the whole response (until EOF or 5 s).
pub fn raw_http(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // Stop after a complete response to a request that kept the connection open.
                let text = String::from_utf8_lossy(&out);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let head = &text[..head_end];
                    if head.starts_with("HTTP/1.1 101") {
                        break;
                    }
                    let len = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    });
                    if let Some(len) = len {
                        if out.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every value of a header in a raw response's head, whatever the case of its name.
pub fn header_values(response: &str, name: &str) -> Vec<String> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The first value of a header in a raw response's head.
pub fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The status code of a raw HTTP response.
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A GET with WebSocket upgrade headers, for handshake tests; `extra` lines end in \r\n.
pub fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

// ---- the process table -------------------------------------------------------------------

/// (pid, ppid, pgrp, state) of every process.
pub fn processes() -> Vec<(u32, u32, u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain spaces.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 3 {
            continue;
        }
        let state = fields[0].chars().next().unwrap_or('?');
        let ppid = fields[1].parse().unwrap_or(0);
        let pgrp = fields[2].parse().unwrap_or(0);
        out.push((pid, ppid, pgrp, state));
    }
    out
}

/// Direct children of `pid` (zombies included).
pub fn children_of(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.1 == pid)
        .map(|p| p.0)
        .collect()
}

/// Zombie children of `pid`.
pub fn zombies_of(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.1 == pid && p.3 == 'Z')
        .map(|p| p.0)
        .collect()
}

/// Live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.2 == pgid && p.3 != 'Z')
        .map(|p| p.0)
        .collect()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    processes().iter().any(|p| p.0 == pid && p.3 != 'Z')
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of `pid`.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The peak resident memory of `pid` so far, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A line of `/proc/PID/status` given in kB, 0 if it cannot be read.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

// ---- helpers of tests/data.rs, tests/lifecycle.rs and tests/hostile.rs -----------------------

/// A path as the `&str` argument lists take.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first message, a pid the script printed with `echo $$` or `echo $!`.
pub async fn recv_pid(c: &mut Client) -> u32 {
    let text = c.recv_text().await;
    text.parse()
        .unwrap_or_else(|_| panic!("expected a pid, got {text:?}"))
}

/// The raw file descriptor of a client's TCP socket.
pub fn client_fd(c: &Client) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    #[allow(unreachable_patterns)]
    match c.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.as_raw_fd(),
        _ => unreachable!("plain ws:// connection"),
    }
}

/// A WebSocket handshake on a plain `std` TCP stream, for tests that must control the socket
/// themselves (never read, drop with FIN or RST, write raw frames). Returns the stream,
/// positioned right after the `101` response head.
pub fn raw_ws_upgrade(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&upgrade_request(path, "")).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the handshake response ended early ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
    s.set_read_timeout(None).unwrap();
    s
}

/// Makes closing the socket `fd` reset the connection (RST) instead of ending it with FIN:
/// SO_LINGER on with a zero timeout.
pub fn set_linger_zero(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid, live `struct linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        std::io::Error::last_os_error()
    );
}

/// The process group of `pid`, if it exists.
pub fn pgrp_of(pid: u32) -> Option<u32> {
    processes().into_iter().find(|p| p.0 == pid).map(|p| p.2)
}

/// Waits until `pid` is gone (exited and reaped, or a zombie of someone else); true if it went.
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    wait_until(within, || !alive(pid))
}

/// A wsd that is stopped with SIGTERM when dropped, so that it tears down its children (which
/// live in their own process groups and would outlive a SIGKILLed wsd) even when a test fails
/// half-way; [`Wsd`]'s own drop then kills it if it is still running.
pub struct GracefulWsd(pub Wsd);

impl GracefulWsd {
    pub fn start(args: &[&str]) -> GracefulWsd {
        GracefulWsd(Wsd::start(args))
    }
}

impl std::ops::Deref for GracefulWsd {
    type Target = Wsd;
    fn deref(&self) -> &Wsd {
        &self.0
    }
}

impl std::ops::DerefMut for GracefulWsd {
    fn deref_mut(&mut self) -> &mut Wsd {
        &mut self.0
    }
}

impl Drop for GracefulWsd {
    fn drop(&mut self) {
        if let Ok(None) = self.0.child.try_wait() {
            self.0.signal(libc::SIGTERM);
            let _ = self.0.wait_exit(Duration::from_secs(5));
        }
    }
}
