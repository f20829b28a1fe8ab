//! Live feeds: `--broadcast` (one shared program per route, fan-out, bounded queues with 1013
//! for a client that falls behind, `--linger-ms`, `--replay`) and `--sse` (Server-Sent Events,
//! per connection and shared).
mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SECS5: Duration = Duration::from_secs(5);

/// A program that prints its pid, then echoes each stdin line as `got LINE`.
fn echo_with_pid(dir: &TempDir) -> std::path::PathBuf {
    dir.script(
        "shared.sh",
        "echo $$\nwhile IFS= read -r line; do echo \"got $line\"; done",
    )
}

/// A program printing `1`, `2`, ... every `ms` milliseconds.
fn counter(dir: &TempDir, ms: u32) -> std::path::PathBuf {
    let secs = format!("{}.{:03}", ms / 1000, ms % 1000);
    dir.script(
        "counter.sh",
        &format!("i=0\nwhile true; do i=$((i+1)); echo $i; sleep {secs}; done"),
    )
}

async fn recv_number(c: &mut Client) -> u64 {
    let t = c.recv_text().await;
    t.parse()
        .unwrap_or_else(|_| panic!("expected a number, got {t:?}"))
}

// ---- --broadcast ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_route_share_one_program_and_every_line_reaches_all_of_them() {
    let dir = TempDir::new("share");
    let script = echo_with_pid(&dir);
    let wsd = Wsd::start(&["--broadcast", s(&script)]);
    let mut a = wsd.connect("/").await;
    let pid = recv_pid(&mut a).await;
    let mut b = wsd.connect("/other/path?q=1").await;
    a.send_text("from a").await;
    b.send_text("from b").await;
    for c in [&mut a, &mut b] {
        let mut got = vec![c.recv_text().await, c.recv_text().await];
        got.sort();
        assert_eq!(got, vec!["got from a", "got from b"]);
    }
    assert_eq!(children_of(wsd.pid()), vec![pid]);
    a.close().await;
    b.close().await;
    assert!(
        wait_gone(pid, SECS5),
        "the shared program outlived its last client"
    );
    // The next client starts a fresh one.
    let mut c = wsd.connect("/").await;
    let pid2 = recv_pid(&mut c).await;
    assert_ne!(pid2, pid);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_many_clients_reach_the_shared_stdin_as_whole_lines() {
    let wsd = Wsd::start(&["--broadcast", "cat"]);
    let a = wsd.connect("/").await;
    let b = wsd.connect("/").await;
    let line = |who: char, i: usize| format!("{who}{i:04}{}", who.to_string().repeat(3000));
    let send = |mut c: Client, who: char| async move {
        for i in 0..100 {
            c.send_text(&line(who, i)).await;
        }
        c
    };
    let (mut a, mut b) = tokio::join!(send(a, 'a'), send(b, 'b'));
    for c in [&mut a, &mut b] {
        let (mut seen_a, mut seen_b) = (0, 0);
        for _ in 0..200 {
            let got = c.recv_text().await;
            let i: usize = got[1..5].parse().expect("a line starting with a number");
            let who = got.chars().next().unwrap();
            assert_eq!(got, line(who, i), "a line was cut or interleaved");
            match who {
                'a' => {
                    assert_eq!(i, seen_a);
                    seen_a += 1
                }
                _ => {
                    assert_eq!(i, seen_b);
                    seen_b += 1
                }
            }
        }
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_shared_program_exits_every_client_gets_its_close_frame() {
    let dir = TempDir::new("share-exit");
    let script = dir.script(
        "exit3.sh",
        "while IFS= read -r line; do echo \"$line\"; [ \"$line\" = stop ] && exit 3; done",
    );
    let wsd = Wsd::start(&["--broadcast", s(&script)]);
    let mut a = wsd.connect("/").await;
    let mut b = wsd.connect("/").await;
    a.send_text("hello").await;
    assert_eq!(b.recv_text().await, "hello");
    b.send_text("stop").await;
    for c in [&mut a, &mut b] {
        let (texts, close) = c.read_to_close(SECS5).await;
        assert_eq!(texts.last().map(String::as_str), Some("stop"));
        assert_eq!(close, Some((1011, "exit status 3".to_string())));
    }
    assert!(wait_until(SECS5, || children_of(wsd.pid()).is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_ms_keeps_the_program_for_a_returning_client_then_stops_it() {
    let dir = TempDir::new("linger");
    let script = echo_with_pid(&dir);
    let wsd = Wsd::start(&["--broadcast", "--linger-ms=1500", s(&script)]);
    let mut a = wsd.connect("/").await;
    let pid = recv_pid(&mut a).await;
    a.close().await;
    std::thread::sleep(Duration::from_millis(700));
    assert!(alive(pid), "stopped before --linger-ms passed");
    let mut b = wsd.connect("/").await;
    b.send_text("back").await;
    assert_eq!(b.recv_text().await, "got back", "not the same program");
    assert_eq!(children_of(wsd.pid()), vec![pid]);
    let left = Instant::now();
    b.close().await;
    assert!(wait_gone(pid, SECS5));
    let after = left.elapsed();
    assert!(
        after >= Duration::from_millis(1400),
        "stopped after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_ms_minus_one_starts_the_program_with_the_server_and_keeps_it() {
    let dir = TempDir::new("forever");
    let script = echo_with_pid(&dir);
    let wsd = Wsd::start(&["--broadcast", "--linger-ms=-1", s(&script)]);
    assert!(wait_until(SECS5, || children_of(wsd.pid()).len() == 1));
    let pid = children_of(wsd.pid())[0];
    let mut a = wsd.connect("/").await;
    a.send_text("hi").await;
    assert_eq!(a.recv_text().await, "got hi");
    a.close().await;
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(pid));
    assert_eq!(children_of(wsd.pid()), vec![pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_1013_while_the_others_get_every_line() {
    let dir = TempDir::new("slow");
    // 30,000 lines of 1 KB (30 MB, more than socket buffers hold), 100 at a time.
    let script = dir.script(
        "fast.sh",
        "pad=$(printf '%01000d' 0)\ni=0\nwhile [ $i -lt 30000 ]; do\n  j=0\n  while [ $j -lt 100 ]; do i=$((i+1)); j=$((j+1)); echo \"$i $pad\"; done\n  sleep 0.005\ndone\nexec sleep 1000",
    );
    let wsd = Wsd::start(&["--broadcast", s(&script)]);
    let wsd_pid = wsd.pid();
    // The slow one connects first and never reads.
    let mut slow = raw_ws_upgrade(wsd.port, "/");
    let mut fast = wsd.connect("/").await;
    let rss_before = rss_kib(wsd_pid);
    let mut rss_peak = rss_before;
    let start = Instant::now();
    let first = fast.recv_text().await;
    let mut expect: u64 = first.split(' ').next().unwrap().parse().unwrap();
    while expect < 30000 {
        let line = match fast.next_event(SECS5).await {
            Event::Text(t) => t,
            other => panic!("the fast client got {other:?} after line {expect}"),
        };
        let n: u64 = line.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, expect + 1, "a line was lost or repeated");
        expect = n;
        if n % 1000 == 0 {
            rss_peak = rss_peak.max(rss_kib(wsd_pid));
        }
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the fast client took {took:?}"
    );
    assert!(wsd
        .wait_log("(--send-queue): closing it with 1013", SECS5)
        .is_some());
    assert_eq!(wsd.count_log("closing it with 1013"), 1);
    // The slow client's queue (1024 lines of 1 KB) is all wsd holds for it.
    let grown = rss_peak.saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "wsd grew by {grown} KiB");
    // Whatever the slow one had in its socket, its last frame is the 1013 close.
    slow.set_read_timeout(Some(SECS5)).unwrap();
    let mut all = Vec::new();
    let _ = slow.read_to_end(&mut all);
    let close = last_close_frame(&all).expect("a close frame");
    assert_eq!(close.0, 1013, "{close:?}");
    fast.close().await;
}

/// The close frame among a server's frames, if any.
fn last_close_frame(mut data: &[u8]) -> Option<(u16, String)> {
    let mut close = None;
    while data.len() >= 2 {
        let mut len = (data[1] & 0x7f) as usize;
        let mut off = 2;
        if len == 126 {
            len = u16::from_be_bytes([data[2], data[3]]) as usize;
            off = 4;
        } else if len == 127 {
            len = u64::from_be_bytes(data[2..10].try_into().ok()?) as usize;
            off = 10;
        }
        if data.len() < off + len {
            break;
        }
        let payload = &data[off..off + len];
        if data[0] & 0x0f == 8 && len >= 2 {
            close = Some((
                u16::from_be_bytes([payload[0], payload[1]]),
                String::from_utf8_lossy(&payload[2..]).into_owned(),
            ));
        }
        data = &data[off + len..];
    }
    close
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_gives_a_new_client_the_last_lines_then_the_live_stream_without_gap_or_repeat() {
    let dir = TempDir::new("replay");
    let script = counter(&dir, 20);
    let wsd = Wsd::start(&["--broadcast", "--replay=5", s(&script)]);
    let mut a = wsd.connect("/").await;
    let mut last_a = 0;
    for _ in 0..20 {
        last_a = recv_number(&mut a).await;
    }
    let mut b = wsd.connect("/").await;
    let first = recv_number(&mut b).await;
    // Five replayed lines at most 5 behind what A has seen, then consecutive.
    assert!(
        first + 5 > last_a && first <= last_a + 1,
        "first {first}, A was at {last_a}"
    );
    let mut prev = first;
    for _ in 0..30 {
        let n = recv_number(&mut b).await;
        assert_eq!(n, prev + 1, "gap or repeat at the seam");
        prev = n;
    }
    a.close().await;
    b.close().await;
}

#[test]
fn live_feed_flags_need_broadcast_and_sse_refuses_binary() {
    for (args, flag) in [
        (vec!["--replay=3", "cat"], "--replay"),
        (vec!["--linger-ms=100", "cat"], "--linger-ms"),
        (vec!["--send-queue=8", "cat"], "--send-queue"),
        (vec!["--broadcast", "--linger-ms=-2", "cat"], "--linger-ms"),
        (vec!["--sse", "--binary", "cat"], "--sse"),
        (vec!["--broadcast", "--send-queue=0", "cat"], "--send-queue"),
    ] {
        assert_usage_error(&args, &[flag]);
    }
}

// ---- --sse ---------------------------------------------------------------------------------

/// An event-stream request; returns the reader positioned after the response head.
fn sse_get(port: u16, path: &str, extra: &str) -> (String, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(SECS5)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    (head, r)
}

/// The next event's lines (chunked encoding stripped), without the blank line.
fn next_event(r: &mut BufReader<TcpStream>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return lines;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        // Chunk-size lines of the chunked encoding.
        if !line.is_empty() && line.chars().all(|c| c.is_ascii_hexdigit()) && !lines.is_empty()
            || (lines.is_empty() && !line.is_empty() && line.chars().all(|c| c.is_ascii_hexdigit()))
        {
            continue;
        }
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return lines;
        }
        lines.push(line);
    }
}

#[tokio::test]
async fn sse_streams_each_line_as_a_numbered_event_then_an_exit_event() {
    let dir = TempDir::new("sse");
    let script = dir.script(
        "env.sh",
        "echo \"query=$QUERY_STRING\"\necho \"accept=$HTTP_ACCEPT\"\nprintf 'a\\rb\\n'\nexit 0",
    );
    let wsd = Wsd::start(&["--sse", s(&script)]);
    let (head, mut r) = sse_get(wsd.port, "/feed?x=1", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    assert!(lower.contains("cache-control: no-cache"), "{head}");
    assert_eq!(next_event(&mut r), vec!["id: 1", "data: query=x=1"]);
    assert_eq!(
        next_event(&mut r),
        vec!["id: 2", "data: accept=text/event-stream"]
    );
    assert_eq!(next_event(&mut r), vec!["id: 3", "data: a", "data: b"]);
    assert_eq!(
        next_event(&mut r),
        vec!["event: exit", "data: exit status 0"]
    );
    assert!(wsd.wait_log("DISCONNECT (event stream)", SECS5).is_some());
}

#[tokio::test]
async fn when_an_sse_client_leaves_its_program_is_stopped() {
    let dir = TempDir::new("sse-leave");
    let script = dir.script("pid.sh", "echo $$\nexec sleep 1000");
    let wsd = Wsd::start(&["--sse", s(&script)]);
    let (_, mut r) = sse_get(wsd.port, "/", "");
    let ev = next_event(&mut r);
    let pid: u32 = ev[1].trim_start_matches("data: ").parse().unwrap();
    assert!(alive(pid));
    drop(r);
    assert!(
        wait_gone(pid, SECS5),
        "the program outlived its event-stream client"
    );
}

#[tokio::test]
async fn sse_sends_a_keepalive_comment_every_pingms() {
    let wsd = Wsd::start(&["--sse", "--pingms=200", "sleep", "1000"]);
    let (_, r) = sse_get(wsd.port, "/", "");
    let mut s = r.into_inner();
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.matches(": keepalive").count() >= 2, "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_broadcast_sse_and_websocket_clients_share_the_program_and_event_ids_resume() {
    let dir = TempDir::new("sse-shared");
    let script = counter(&dir, 50);
    let wsd = Wsd::start(&["--broadcast", "--sse", "--replay=100", s(&script)]);
    let mut ws = wsd.connect("/").await;
    let n = recv_number(&mut ws).await;
    let (_, mut r) = sse_get(wsd.port, "/", "");
    // The replay: every line so far, with its number as its id.
    let ev = next_event(&mut r);
    assert_eq!(ev, vec!["id: 1".to_string(), "data: 1".to_string()]);
    assert!(n >= 1);
    assert_eq!(children_of(wsd.pid()).len(), 1);
    drop(r);
    // Resuming from id 3 (once the program is past it): the stream continues at 4.
    let mut n = n;
    while n < 6 {
        n = recv_number(&mut ws).await;
    }
    let (_, mut r) = sse_get(wsd.port, "/", "Last-Event-ID: 3\r\n");
    assert_eq!(next_event(&mut r), vec!["id: 4", "data: 4"]);
    assert_eq!(next_event(&mut r), vec!["id: 5", "data: 5"]);
    ws.close().await;
}

#[tokio::test]
async fn without_sse_an_event_stream_request_is_told_to_upgrade() {
    let wsd = Wsd::start(&["cat"]);
    let (head, _) = sse_get(wsd.port, "/", "");
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
}
