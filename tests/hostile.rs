//! Hostile input: malformed and oversized HTTP, slow and idle connections, connection floods,
//! malformed WebSocket frames, programs that misbehave, and running out of file descriptors
//! or processes. Each test checks the exact status or close code, that the attack is logged,
//! and that a normal client is served during or after it.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

const SECS5: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;

/// A normal client: connects to `cat`, and gets its message echoed.
async fn assert_served(wsd: &Wsd) {
    let mut c = wsd.connect("/").await;
    c.send_text("still here").await;
    assert_eq!(c.next_event(SECS5).await, Event::Text("still here".into()));
    c.close().await;
}

/// A request for `/` with one header line `name: value` of `len` bytes of value.
fn request_with_header(len: usize) -> Vec<u8> {
    let mut req = upgrade_request("/", &format!("X-Filler: {}\r\n", "a".repeat(len)));
    req.shrink_to_fit();
    req
}

/// Reads until the peer closes or `within` passes; true if it closed.
fn closed_within(s: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, got)
            }
            Err(_) => return (true, got),
        }
    }
}

/// A connection under `--header-timeout-ms=1000` was closed at that timeout: not before it,
/// and not long after.
fn assert_closed_at_the_1_s_header_timeout(after: Duration) {
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    assert!(
        after < Duration::from_millis(3000),
        "closed after {after:?}"
    );
}

// ---- hostile HTTP ------------------------------------------------------------------------

#[tokio::test]
async fn request_headers_over_the_default_16_kib_are_answered_431_once_logged_and_others_served() {
    let wsd = Wsd::start(&["cat"]);
    let response = raw_http(wsd.port, &request_with_header(17 * 1024));
    assert_eq!(status_of(&response), 431, "{response}");
    // Just under the limit is a normal handshake.
    let response = raw_http(wsd.port, &request_with_header(15 * 1024));
    assert_eq!(status_of(&response), 101, "{response}");
    assert_served(&wsd).await;
    assert!(wsd
        .wait_log(
            "431: request headers from 127.0.0.1 over --max-header-bytes",
            SECS5
        )
        .is_some());
    assert_eq!(wsd.count_log("431:"), 1, "{:?}", wsd.stdout());
}

#[tokio::test]
async fn max_header_bytes_changes_the_limit() {
    let wsd = Wsd::start(&["--max-header-bytes=65536", "cat"]);
    assert_eq!(
        status_of(&raw_http(wsd.port, &request_with_header(40 * 1024))),
        101
    );
    assert_eq!(
        status_of(&raw_http(wsd.port, &request_with_header(65 * 1024))),
        431
    );
}

#[test]
fn max_header_bytes_below_8192_is_a_usage_error_naming_the_flag() {
    assert_usage_error(
        &["--max-header-bytes=4096", "cat"],
        &["--max-header-bytes", "at least 8192"],
    );
}

#[tokio::test]
async fn more_than_100_header_fields_are_answered_431() {
    let wsd = Wsd::start(&["cat"]);
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = raw_http(wsd.port, &upgrade_request("/", &many));
    assert_eq!(status_of(&response), 431, "{response}");
    assert_served(&wsd).await;
}

#[tokio::test]
async fn malformed_requests_are_answered_400_each_logged_once_while_others_are_served() {
    let wsd = Wsd::start(&["cat"]);
    let bad: [&[u8]; 5] = [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        // A TLS ClientHello on the plain port.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ];
    let mut c = wsd.connect("/").await;
    for req in bad {
        let response = raw_http(wsd.port, req);
        assert_eq!(
            status_of(&response),
            400,
            "{:?} got {response:?}",
            String::from_utf8_lossy(req)
        );
        // The open session carries on.
        c.send_text("during").await;
        assert_eq!(c.next_event(SECS5).await, Event::Text("during".into()));
    }
    c.close().await;
    assert!(wait_until(SECS5, || wsd
        .count_log("400: malformed request")
        == 5));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        wsd.count_log("400: malformed request"),
        5,
        "{:?}",
        wsd.stdout()
    );
    assert_served(&wsd).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout_without_an_answer() {
    let wsd = Wsd::start(&["--header-timeout-ms=1000", "cat"]);
    let mut idle = TcpStream::connect(("127.0.0.1", wsd.port)).unwrap();
    let start = Instant::now();
    assert_served(&wsd).await;
    let (closed, got) = closed_within(&mut idle, SECS5);
    let after = start.elapsed();
    assert!(closed, "still open after 5 s");
    assert_closed_at_the_1_s_header_timeout(after);
    assert_eq!(got, b"");
    assert!(wsd
        .wait_log("no complete request headers in time", SECS5)
        .is_some());
}

#[tokio::test]
async fn a_kept_alive_connection_idle_after_a_response_is_closed_after_the_header_timeout() {
    let wsd = Wsd::start(&["--header-timeout-ms=1000", "cat"]);
    let mut s = TcpStream::connect(("127.0.0.1", wsd.port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let (closed, got) = closed_within(&mut s, SECS5);
    let after = start.elapsed();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 426 "), "{got}");
    assert!(closed, "still open after 5 s");
    assert_closed_at_the_1_s_header_timeout(after);
}

#[tokio::test]
async fn a_slowloris_sending_a_byte_at_a_time_is_closed_at_the_header_timeout_not_kept_alive_by_it()
{
    let wsd = Wsd::start(&["--header-timeout-ms=1000", "cat"]);
    let port = wsd.port;
    let dribbler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let start = Instant::now();
        let request = upgrade_request("/", "");
        for byte in request.iter().take(request.len() - 1) {
            if s.write_all(&[*byte]).is_err() {
                return start.elapsed();
            }
            // A closed connection shows up as EOF on a read.
            s.set_read_timeout(Some(Duration::from_millis(150)))
                .unwrap();
            let mut buf = [0u8; 64];
            if matches!(s.read(&mut buf), Ok(0) | Ok(_)) {
                return start.elapsed();
            }
            if start.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
        start.elapsed()
    });
    assert_served(&wsd).await;
    let after = tokio::task::spawn_blocking(move || dribbler.join().unwrap())
        .await
        .unwrap();
    assert_closed_at_the_1_s_header_timeout(after);
}

#[tokio::test]
async fn beyond_max_pending_the_oldest_idle_connection_is_closed_and_a_real_client_is_served() {
    let wsd = Wsd::start(&["--max-pending=8", "cat"]);
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", wsd.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The ninth connection, a real client, pushes out the oldest idle one.
    assert_served(&wsd).await;
    let (closed, got) = closed_within(&mut idle[0], SECS5);
    assert!(closed, "the oldest idle connection is still open");
    assert_eq!(got, b"");
    let (closed, _) = closed_within(&mut idle[7], Duration::from_millis(300));
    assert!(!closed, "the newest idle connection was closed too");
    let line = wsd
        .wait_log("(--max-pending): closed the oldest", SECS5)
        .expect("eviction logged");
    assert!(line.contains("more than 8 connections"), "{line}");

    // Under a flood of idle connections, real clients are still served.
    let port = wsd.port;
    let flood = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..200 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        held.len()
    });
    for _ in 0..5 {
        assert_served(&wsd).await;
    }
    let opened = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    assert_eq!(opened, 200);
    assert_served(&wsd).await;
}

// ---- hostile frames ------------------------------------------------------------------------

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: `first` is FIN/RSV/opcode, the length is encoded as the payload needs.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = frame_head(first, payload.len() as u64, masked);
    if masked {
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A frame head declaring `len` bytes of payload (and the mask key, if masked).
fn frame_head(first: u8, len: u64, masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut f = vec![first];
    if len < 126 {
        f.push(mask_bit | len as u8);
    } else if len < 65536 {
        f.push(mask_bit | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask_bit | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    if masked {
        f.extend_from_slice(&MASK);
    }
    f
}

/// Reads server frames until a close frame: its code and reason, or `None` on EOF first.
fn read_close(s: &mut TcpStream, within: Duration) -> Option<(u16, String)> {
    s.set_read_timeout(Some(within)).unwrap();
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).ok()?;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).ok()?;
        if head[0] & 0x0f == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
        }
    }
}

/// Upgrades a raw connection to `cat`, sends `bytes`, and returns the close code wsd sends.
fn close_code_for(wsd: &Wsd, bytes: &[u8]) -> Option<(u16, String)> {
    let mut s = raw_ws_upgrade(wsd.port, "/");
    // The peer may close before all is written; that is fine.
    let _ = s.write_all(bytes);
    read_close(&mut s, SECS5)
}

#[tokio::test]
async fn protocol_violations_in_frames_are_closed_with_1002_and_others_carry_on() {
    let wsd = Wsd::start(&["cat"]);
    let mut c = wsd.connect("/").await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked client frame", frame(0x81, b"hello", false)),
        ("RSV1 set", frame(0xc1, b"hello", true)),
        ("RSV2 and RSV3 set", frame(0xb1, b"hello", true)),
        ("reserved data opcode 3", frame(0x83, b"x", true)),
        ("reserved control opcode 0xb", frame(0x8b, b"x", true)),
        ("fragmented ping", frame(0x09, b"x", true)),
        (
            "ping payload over 125 bytes",
            frame(0x89, &[b'p'; 126], true),
        ),
        ("continuation without a start", frame(0x80, b"x", true)),
        (
            "new message inside a fragmented one",
            [frame(0x01, b"a", true), frame(0x81, b"b", true)].concat(),
        ),
        (
            "64-bit length with the top bit set",
            frame_head(0x82, 1 << 63, true),
        ),
    ];
    for (what, bytes) in cases {
        let got = close_code_for(&wsd, &bytes);
        assert_eq!(got.as_ref().map(|c| c.0), Some(1002), "{what}: {got:?}");
        c.send_text(what).await;
        assert_eq!(c.next_event(SECS5).await, Event::Text(what.into()));
    }
    c.close().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_is_closed_with_1007_and_a_fixed_reason() {
    let wsd = Wsd::start(&["cat"]);
    let got = close_code_for(&wsd, &frame(0x81, b"ok \xff\xfe not", true));
    assert_eq!(
        got,
        Some((1007, "invalid UTF-8 in a text message".to_string()))
    );
    // Fragmented: refused at the bad fragment, before the message is complete.
    let mut s = raw_ws_upgrade(wsd.port, "/");
    s.write_all(&frame(0x01, "κόσμε".as_bytes(), true)).unwrap();
    s.write_all(&frame(0x00, b"\xf4\x90\x80\x80", true))
        .unwrap();
    assert_eq!(read_close(&mut s, SECS5).map(|c| c.0), Some(1007));
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_closed_with_1009_without_reading_or_allocating_it() {
    let wsd = Wsd::start(&["cat"]);
    let before = peak_rss_kib(wsd.pid());
    let mut s = raw_ws_upgrade(wsd.port, "/");
    // 64 MiB declared, 1 MiB sent: wsd must answer at the header.
    let start = Instant::now();
    s.write_all(&frame_head(0x82, 64 * MIB as u64, true))
        .unwrap();
    let _ = s.write_all(&vec![0u8; MIB]);
    let got = read_close(&mut s, SECS5);
    assert_eq!(got.as_ref().map(|c| c.0), Some(1009), "{got:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let grown = peak_rss_kib(wsd.pid()).saturating_sub(before);
    assert!(grown < 4 * 1024, "wsd's peak memory grew by {grown} KiB");
    // A 1 GiB declaration, with nothing after it.
    let got = close_code_for(&wsd, &frame_head(0x81, 1 << 30, true));
    assert_eq!(got.map(|c| c.0), Some(1009));
    assert_served(&wsd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_message_is_accepted_when_the_limit_allows_it_in_about_2x_its_size_of_memory() {
    let dir = TempDir::new("big-message");
    // Reads the message and its newline, and prints how many bytes that was.
    let script = dir.script("count.sh", "head -c 67108865 | wc -c");
    let wsd = Wsd::start(&["--maxframesize=134217728", s(&script)]);
    let mut c = wsd.connect("/").await;
    let before = peak_rss_kib(wsd.pid());
    c.ws.send(Message::Text("a".repeat(64 * MIB).into()))
        .await
        .expect("send 64 MiB");
    let (texts, close) = c.read_to_close(Duration::from_secs(30)).await;
    assert_eq!(texts, vec!["67108865".to_string()]);
    assert_eq!(close.map(|c| c.0), Some(1000));
    let grown_mib = peak_rss_kib(wsd.pid()).saturating_sub(before) / 1024;
    assert!(
        grown_mib <= 2 * 64 + 8,
        "wsd's peak memory grew by {grown_mib} MiB for a 64 MiB message"
    );
}

#[tokio::test]
async fn a_64_mib_message_under_the_default_limit_is_closed_with_1009() {
    let wsd = Wsd::start(&["cat"]);
    let mut c = wsd.connect("/").await;
    // The send may fail once wsd has closed: the close frame is what counts.
    let _ = c.ws.send(Message::Binary(vec![0u8; 64 * MIB].into())).await;
    match c.next_event(SECS5).await {
        Event::Close(Some((code, reason))) => {
            assert_eq!(code, 1009, "{reason}");
            assert!(reason.contains("over the limit of 1048576"), "{reason}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reset_in_the_middle_of_a_frame_ends_the_program_and_others_carry_on() {
    let dir = TempDir::new("rst-frame");
    let script = dir.script("pid.sh", "echo $$\nexec cat");
    let wsd = Wsd::start(&[s(&script)]);
    let mut other = wsd.connect("/").await;
    let other_pid = recv_pid(&mut other).await;

    let mut s = raw_ws_upgrade(wsd.port, "/");
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    let mut pid = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut pid).unwrap();
    let pid: u32 = String::from_utf8(pid).unwrap().parse().unwrap();
    let mut partial = frame_head(0x81, 1000, true);
    partial.extend_from_slice(&[b'x'; 10]);
    s.write_all(&partial).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    {
        use std::os::fd::AsRawFd;
        set_linger_zero(s.as_raw_fd());
    }
    drop(s);
    assert!(
        wait_gone(pid, SECS5),
        "the program {pid} outlived its reset connection"
    );
    assert!(alive(other_pid));
    other.send_text("unaffected").await;
    assert_eq!(
        other.next_event(SECS5).await,
        Event::Text("unaffected".into())
    );
    other.close().await;
    assert!(wait_until(SECS5, || wsd.count_log("| DISCONNECT") == 2));
}

// ---- hostile programs ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_flooding_stdout_to_a_client_that_never_reads_keeps_wsd_memory_bounded() {
    let dir = TempDir::new("flood-out");
    let script = dir.script(
        "flood.sh",
        "exec yes 0123456789012345678901234567890123456789012345678901234567890",
    );
    let wsd = Wsd::start(&[s(&script)]);
    let wsd_pid = wsd.pid();
    let s = raw_ws_upgrade(wsd.port, "/");
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(wsd_pid);
    let mut peak = before;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        peak = peak.max(rss_kib(wsd_pid));
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "wsd grew by {grown} KiB ({before} -> {peak}) while its client did not read"
    );
    let child = children_of(wsd_pid);
    assert_eq!(child.len(), 1, "{child:?}");
    {
        use std::os::fd::AsRawFd;
        set_linger_zero(s.as_raw_fd());
    }
    drop(s);
    assert!(
        wait_gone(child[0], SECS5),
        "the flooding program outlived its client"
    );
}

#[tokio::test]
async fn a_program_that_exits_at_once_gives_an_immediate_1000_and_leaves_no_zombie() {
    let wsd = Wsd::start(&["true"]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert!(texts.is_empty(), "{texts:?}");
    assert_eq!(close.map(|c| c.0), Some(1000));
    assert!(wait_until(SECS5, || children_of(wsd.pid()).is_empty()
        && zombies_of(wsd.pid()).is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_without_a_newline_arrive_as_one_message_at_eof() {
    let wsd = Wsd::start(&["sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' a"]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(Duration::from_secs(20)).await;
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].len(), 10_000_000);
    assert!(texts[0].bytes().all(|b| b == b'a'));
    assert_eq!(close.map(|c| c.0), Some(1000));
}

#[tokio::test]
async fn a_program_that_closes_stdout_but_keeps_running_is_ended_and_the_client_told() {
    let dir = TempDir::new("close-stdout");
    let pidfile = dir.path().join("pid");
    let script = dir.script(
        "quiet.sh",
        &format!(
            "echo last\necho $$ > {}\nexec 1>&-\nexec sleep 1000",
            pidfile.display()
        ),
    );
    let wsd = Wsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let start = Instant::now();
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, vec!["last".to_string()]);
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1011);
    assert_eq!(reason, "killed by signal 2 (SIGINT)");
    assert!(start.elapsed() < Duration::from_secs(2));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_gone(pid, SECS5));
}

#[tokio::test]
async fn a_command_that_disappears_or_loses_its_execute_bit_is_a_500_and_the_server_carries_on() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("vanishing");
    let script = dir.script("echo.sh", "exec cat");
    let wsd = Wsd::start(&[s(&script)]);
    assert_served(&wsd).await;

    let hidden = dir.path().join("elsewhere");
    std::fs::rename(&script, &hidden).unwrap();
    let response = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(status_of(&response), 500, "{response}");
    let line = wsd
        .wait_log("Could not launch process", SECS5)
        .expect("logged");
    assert!(line.contains("No such file or directory"), "{line}");

    std::fs::rename(&hidden, &script).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let response = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(status_of(&response), 500, "{response}");
    assert!(wait_until(SECS5, || wsd.stdout().iter().any(|l| l
        .contains("Could not launch process")
        && l.contains("Permission denied"))));

    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_served(&wsd).await;
}

// ---- resource exhaustion -----------------------------------------------------------------

/// Sets the soft limit on open files of a running process, keeping its hard limit (raising a
/// hard limit needs CAP_SYS_RESOURCE, which a container may not grant).
fn set_fd_limit(pid: u32, value: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit structs; prlimit with a null new limit only reads.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut lim,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur = value;
    // SAFETY: as above.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// wsd's open descriptors once the last session's teardown is over.
fn settled_fd_count(pid: u32) -> u64 {
    assert!(wait_until(SECS5, || children_of(pid).is_empty()));
    let mut last = fd_count(pid);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let now = fd_count(pid);
        if now == last {
            break;
        }
        last = now;
    }
    last as u64
}

#[tokio::test]
async fn out_of_file_descriptors_new_connections_get_503_and_service_recovers_by_itself() {
    let wsd = Wsd::start(&["--max-pending=0", "cat"]);
    assert_served(&wsd).await;
    let pid = wsd.pid();
    let base = settled_fd_count(pid);
    set_fd_limit(pid, base + 4);

    // Idle connections use up the descriptors, until one is answered 503 instead of served.
    let mut hogs: Vec<TcpStream> = Vec::new();
    let refused = loop {
        let mut hog = TcpStream::connect(("127.0.0.1", wsd.port)).unwrap();
        hog.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n @ 1..) = hog.read(&mut buf) {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        hogs.push(hog);
        assert!(hogs.len() < 12, "wsd never ran out of descriptors");
    };
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = raw_http(wsd.port, &upgrade_request("/", ""));
        statuses.push(status_of(&response));
        assert_eq!(statuses.last(), Some(&503), "{response}");
        if statuses.len() == 1 {
            assert_eq!(header(&response, "retry-after"), Some("1"), "{response}");
        }
    }
    assert_eq!(statuses, vec![503, 503, 503]);
    assert!(
        wsd.wait_log(
            "out of file descriptors: answering new connections 503",
            SECS5
        )
        .is_some(),
        "{:#?}",
        wsd.stdout()
    );

    // The hogs leave: service comes back without anyone touching wsd.
    drop(hogs);
    set_fd_limit(pid, base + 16);
    std::thread::sleep(Duration::from_millis(300));
    assert_served(&wsd).await;
    assert!(wsd
        .wait_log("file descriptors are available again", SECS5)
        .is_some());
    assert_eq!(wsd.count_log("out of file descriptors"), 1);
}

#[tokio::test]
async fn when_a_programs_pipes_cannot_be_opened_the_upgrade_gets_503_and_service_recovers() {
    let wsd = Wsd::start(&["cat"]);
    assert_served(&wsd).await;
    let pid = wsd.pid();
    let base = settled_fd_count(pid);
    // Room for the connection's socket, not for the three pipes of a program.
    set_fd_limit(pid, base + 3);
    let response = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(status_of(&response), 503, "{response}");
    assert_eq!(header(&response, "retry-after"), Some("1"), "{response}");
    let line = wsd
        .wait_log("Could not launch process", SECS5)
        .expect("logged");
    assert!(
        line.contains("Too many open files") && line.contains("answering 503"),
        "{line}"
    );

    set_fd_limit(pid, base + 32);
    assert_served(&wsd).await;
}

/// Starts wsd as user nobody (a process limit does not bind root) running `cat`, with at most
/// `nproc` tasks (threads included) for that user, or no limit.
fn start_as_nobody(nproc: Option<u64>) -> Wsd {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let mut cmd = std::process::Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(wsd_bin())
        .args([&format!("--port={port}"), "--address=127.0.0.1", "cat"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(n) = nproc {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit is async-signal-safe and `lim` is a valid struct copied in.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NPROC, &lim) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let wsd = Wsd::spawn(cmd, port);
    wsd.assert_listening(port);
    wsd
}

/// Tasks (processes and threads) of user nobody.
fn tasks_of_nobody() -> u64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|st| {
            st.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534"))
        })
        .map(|st| {
            st.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(1)
        })
        .sum()
}

#[tokio::test]
async fn when_no_process_can_be_forked_the_upgrade_gets_503_and_service_recovers() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to run wsd as nobody under a process limit");
        return;
    }
    // How many tasks nobody has with one wsd that has served a connection.
    let others = tasks_of_nobody();
    let tasks = {
        let probe = start_as_nobody(None);
        assert_served(&probe).await;
        assert!(wait_until(SECS5, || children_of(probe.pid()).is_empty()));
        tasks_of_nobody()
    };
    assert!(wait_until(SECS5, || tasks_of_nobody() == others));
    // Room for one program.
    let wsd = start_as_nobody(Some(tasks + 1));
    let mut first = wsd.connect("/").await;
    first.send_text("one").await;
    assert_eq!(first.next_event(SECS5).await, Event::Text("one".into()));
    let response = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(status_of(&response), 503, "{response}");
    assert_eq!(header(&response, "retry-after"), Some("1"), "{response}");
    let line = wsd
        .wait_log("Could not launch process", SECS5)
        .expect("logged");
    assert!(line.contains("answering 503"), "{line}");

    first.close().await;
    assert!(wait_until(SECS5, || children_of(wsd.pid()).is_empty()));
    assert_served(&wsd).await;
}
