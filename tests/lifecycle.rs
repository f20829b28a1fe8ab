//! The program's life: its process group, how it is ended when the client leaves (stdin closed,
//! then SIGINT, SIGTERM and SIGKILL to the group), background grandchildren, no leaks over many
//! connections, stderr in the log, graceful shutdown of wsd, and the access log.
mod common;
use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

const SECS5: Duration = Duration::from_secs(5);

/// A script that prints its pid, reads stdin to its end, then records that it saw the end in
/// the file named by its first argument and exits 0.
fn eof_recorder(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let script = dir.script("eof.sh", "echo $$\ncat > /dev/null\necho eof > \"$1\"");
    (script, dir.path().join("saw-eof"))
}

/// Asserts that the program saw the end of its stdin and is gone within 2 s.
fn assert_stdin_closed_and_gone(pid: u32, marker: &Path) {
    assert!(
        wait_gone(pid, Duration::from_secs(2)),
        "the program {pid} is still running"
    );
    assert_eq!(
        std::fs::read_to_string(marker).ok().as_deref(),
        Some("eof\n"),
        "the program did not see EOF on stdin"
    );
}

// ---- the process group -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_runs_in_its_own_process_group() {
    let dir = TempDir::new("pgrp");
    let script = dir.script("pid.sh", "echo $$\nexec cat");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    assert_eq!(children_of(wsd.pid()), vec![pid]);
    assert_eq!(pgrp_of(pid), Some(pid));
    let wsd_pgrp = pgrp_of(wsd.pid()).expect("wsd is running");
    assert_ne!(wsd_pgrp, pid);
    c.close().await;
}

// ---- the client leaves ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_client_sends_a_close_frame_stdin_is_closed_and_the_program_ends() {
    let dir = TempDir::new("leave-close");
    let (script, marker) = eof_recorder(&dir);
    let wsd = GracefulWsd::start(&[s(&script), s(&marker)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    c.close().await;
    assert_stdin_closed_and_gone(pid, &marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_client_drops_the_connection_without_a_close_frame_stdin_is_closed_and_the_program_ends(
) {
    let dir = TempDir::new("leave-fin");
    let (script, marker) = eof_recorder(&dir);
    let wsd = GracefulWsd::start(&[s(&script), s(&marker)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    drop(c); // FIN, no close frame
    assert_stdin_closed_and_gone(pid, &marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_connection_is_reset_stdin_is_closed_and_the_program_ends() {
    let dir = TempDir::new("leave-rst");
    let (script, marker) = eof_recorder(&dir);
    let wsd = GracefulWsd::start(&[s(&script), s(&marker)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    set_linger_zero(client_fd(&c));
    drop(c); // RST
    assert_stdin_closed_and_gone(pid, &marker);
}

/// A program that ignores SIGINT and SIGTERM (its `sleep`s inherit the ignored signals).
const STUBBORN: &str = "trap '' INT TERM\necho $$\nwhile :; do sleep 0.1; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_ignores_sigint_and_sigterm_is_sigkilled_after_850_ms() {
    let dir = TempDir::new("stubborn");
    let script = dir.script("stubborn.sh", STUBBORN);
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    let t0 = Instant::now();
    c.ws.close(None).await.unwrap();
    assert!(
        wait_gone(pid, Duration::from_secs(3)),
        "the program {pid} outlived 3 s"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "gone after {took:?}: SIGINT or SIGTERM was not ignored?"
    );
    assert!(
        wait_until(Duration::from_secs(1), || group_members(pid).is_empty()),
        "left in the group: {:?}",
        group_members(pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closems_delays_each_step_of_the_teardown() {
    let dir = TempDir::new("closems");
    let script = dir.script("stubborn.sh", STUBBORN);
    let wsd = GracefulWsd::start(&["--closems=500", s(&script)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    let t0 = Instant::now();
    c.ws.close(None).await.unwrap();
    // 100 + 250 + 500 ms, each plus 500: SIGKILL at 2350 ms.
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "the program {pid} outlived 5 s"
    );
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(2200), "gone after {took:?}");
}

// ---- a client floods a program that never reads ------------------------------------------------

/// Floods `c` with 20 MB in 64 KiB binary messages for at most `within` (the sends stall once
/// the program's pipe, wsd's queue and the socket buffers are full); asserts that they stalled.
async fn flood(c: &mut Client, within: Duration) {
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    let finished = tokio::time::timeout(within, async {
        for _ in 0..320 {
            c.ws.send(Message::Binary(chunk.clone().into()))
                .await
                .expect("send");
            sent += 1;
        }
    })
    .await;
    assert!(
        finished.is_err(),
        "all {sent} messages were sent: nothing stalled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_a_program_that_never_reads_keeps_wsd_memory_bounded() {
    let dir = TempDir::new("flood-rss");
    let script = dir.script("deaf.sh", "echo $$\nexec sleep 1000");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let _pid = recv_pid(&mut c).await;
    let wsd_pid = wsd.pid();
    let before = rss_kib(wsd_pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(wsd_pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    flood(&mut c, Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert!(peak > 0, "no RSS samples");
    let growth_kib = peak.saturating_sub(before);
    assert!(
        growth_kib < 30 * 1024,
        "wsd grew by {growth_kib} KiB ({before} -> {peak})"
    );
    set_linger_zero(client_fd(&c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_never_reads_is_still_ended_when_its_flooding_client_leaves() {
    let dir = TempDir::new("flood-leave");
    let script = dir.script("deaf.sh", "echo $$\nexec sleep 1000");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    flood(&mut c, Duration::from_secs(2)).await;
    // A reset: a FIN (or a close frame) would wait behind the unread data in the socket.
    set_linger_zero(client_fd(&c));
    drop(c);
    assert!(
        wait_gone(pid, Duration::from_secs(3)),
        "the program {pid} still runs 3 s after its client left"
    );
}

// ---- background grandchildren ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_grandchild_dies_with_the_program_when_the_client_leaves() {
    let dir = TempDir::new("grandchild-leave");
    let script = dir.script("bg.sh", "sleep 1000 &\necho $!\nexec cat");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let grandchild = recv_pid(&mut c).await;
    assert!(alive(grandchild));
    c.close().await;
    assert!(
        wait_gone(grandchild, Duration::from_secs(2)),
        "the grandchild {grandchild} is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_grandchild_dies_when_the_program_exits_by_itself() {
    let dir = TempDir::new("grandchild-exit");
    let script = dir.script(
        "bg.sh",
        "sleep 1000 &\necho $!\nsleep 0.3\necho done\nexit 0",
    );
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let grandchild = recv_pid(&mut c).await;
    assert!(alive(grandchild));
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["done"]);
    assert_eq!(close, Some((1000, String::new())));
    assert!(
        wait_gone(grandchild, Duration::from_secs(2)),
        "the grandchild {grandchild} is still running"
    );
}

// ---- many connections --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_cycles_ending_in_close_fin_or_rst_leave_no_zombies_orphans_fds_or_threads() {
    let wsd = GracefulWsd::start(&["cat"]);
    let wsd_pid = wsd.pid();
    let cycle = |i: usize| {
        let wsd = &wsd;
        async move {
            let mut c = wsd.connect(&format!("/cycle/{i}")).await;
            let msg = format!("hello {i}");
            c.send_text(&msg).await;
            assert_eq!(c.recv_text().await, msg);
            match i % 3 {
                0 => c.close().await,
                1 => drop(c),
                _ => {
                    set_linger_zero(client_fd(&c));
                    drop(c);
                }
            }
        }
    };
    let settled = |n: usize| {
        wait_until(SECS5, || {
            wsd.count_log("| DISCONNECT") == n && children_of(wsd_pid).is_empty()
        })
    };

    cycle(0).await;
    assert!(
        settled(1),
        "children after the first cycle: {:?}",
        children_of(wsd_pid)
    );
    let fds_after_first = fd_count(wsd_pid);
    for i in 1..10 {
        cycle(i).await;
    }
    assert!(
        settled(10),
        "children after warm-up: {:?}",
        children_of(wsd_pid)
    );
    let threads_after_warmup = thread_count(wsd_pid);

    for i in 10..300 {
        cycle(i).await;
    }
    assert!(
        settled(300),
        "{} DISCONNECTs; children: {:?}",
        wsd.count_log("| DISCONNECT"),
        children_of(wsd_pid)
    );
    assert_eq!(children_of(wsd_pid), Vec::<u32>::new());
    assert_eq!(zombies_of(wsd_pid), Vec::<u32>::new());
    wait_until(Duration::from_secs(2), || {
        fd_count(wsd_pid) <= fds_after_first
    });
    let fds = fd_count(wsd_pid);
    assert!(
        fds <= fds_after_first,
        "wsd has {fds} fds open, {fds_after_first} after the first cycle"
    );
    let threads = thread_count(wsd_pid);
    assert!(
        threads <= threads_after_warmup + 2,
        "wsd has {threads} threads, {threads_after_warmup} after warm-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_holds_four_descriptors_its_socket_and_three_pipes() {
    // websocketd holds four too; a fifth (a pidfd per child, say) would make wsd run out of
    // descriptors a fifth sooner.
    let wsd = GracefulWsd::start(&["cat"]);
    let mut warm = wsd.connect("/").await;
    warm.send_text("warm").await;
    assert_eq!(warm.recv_text().await, "warm");
    let before = fd_count(wsd.pid());
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = wsd.connect("/").await;
        c.send_text(&format!("hello {i}")).await;
        assert_eq!(c.recv_text().await, format!("hello {i}"));
        clients.push(c);
    }
    assert_eq!(fd_count(wsd.pid()), before + 40);
}

// ---- the program's stderr ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_programs_stderr_is_logged_line_by_line_and_not_sent_to_the_client() {
    let dir = TempDir::new("stderr");
    let script = dir.script(
        "err.sh",
        "echo $$\necho out1\necho err1 >&2\necho 'err 2' >&2\nsleep 0.1\necho out2",
    );
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["out1", "out2"]);
    assert_eq!(close, Some((1000, String::new())));
    assert!(wsd.wait_log("| DISCONNECT", SECS5).is_some());

    let stderr_lines: Vec<String> = wsd
        .stdout()
        .into_iter()
        .filter(|l| l.contains("| stderr     |"))
        .collect();
    assert_eq!(stderr_lines.len(), 2, "stderr lines: {stderr_lines:?}");
    assert!(stderr_lines[0].ends_with(" | err1"), "{}", stderr_lines[0]);
    assert!(stderr_lines[1].ends_with(" | err 2"), "{}", stderr_lines[1]);
    for line in &stderr_lines {
        assert!(line.contains(" id:'"), "no id: {line}");
        assert!(
            line.contains(&format!(" pid:'{pid}'")),
            "no pid:'{pid}': {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_program_writes_to_stderr_while_it_is_being_ended_is_logged() {
    let dir = TempDir::new("stderr-end");
    // Ignores stdin's end; says why it ends on SIGINT, on stderr, after the session is over.
    let script = dir.script(
        "bye.sh",
        "trap 'echo \"bye on SIGINT\" >&2; exit 0' INT\necho $$\nwhile :; do sleep 0.02; done",
    );
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let pid = recv_pid(&mut c).await;
    c.close().await;
    assert!(wait_gone(pid, SECS5), "the program is still running");
    let line = wsd.wait_log(" | bye on SIGINT", SECS5);
    let line = line.unwrap_or_else(|| panic!("not logged: {:?}", wsd.stdout()));
    assert!(line.contains("| stderr     |"), "{line}");
    assert!(wsd.wait_log("| DISCONNECT", SECS5).is_some());
}

// ---- graceful shutdown -------------------------------------------------------------------------

async fn graceful_shutdown_on(sig: i32) {
    let mut wsd = GracefulWsd::start(&["--closems=0", "cat"]);
    let mut a = wsd.connect("/a").await;
    let mut b = wsd.connect("/b").await;
    let mut kids = Vec::new();
    assert!(wait_until(SECS5, || {
        kids = children_of(wsd.pid());
        kids.len() == 2
    }));
    let t0 = Instant::now();
    wsd.signal(sig);
    let want = Event::Close(Some((1001, "server shutting down".into())));
    assert_eq!(a.next_event(Duration::from_secs(3)).await, want);
    assert_eq!(b.next_event(Duration::from_secs(3)).await, want);
    let status = wsd.wait_exit(Duration::from_secs(3).saturating_sub(t0.elapsed()));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "exit status {status:?} after {:?}",
        t0.elapsed()
    );
    for kid in kids {
        assert!(!alive(kid), "the program {kid} outlived wsd");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_connection_with_1001_ends_the_programs_and_exits_0() {
    graceful_shutdown_on(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_every_connection_with_1001_ends_the_programs_and_exits_0() {
    graceful_shutdown_on(libc::SIGINT).await;
}

// ---- the access log ----------------------------------------------------------------------------

/// The value of `key:'...'` in a log line.
fn pair<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}:'"))? + key.len() + 3;
    let len = line[start..].find('\'')?;
    Some(&line[start..start + len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_connect_and_one_disconnect_line_per_connection() {
    let dir = TempDir::new("access");
    let script = dir.script("pid.sh", "echo $$\nexec cat");
    let wsd = GracefulWsd::start(&["--loglevel=access", s(&script)]);

    let mut c = wsd.connect("/some/path?q=1").await;
    let pid = recv_pid(&mut c).await;
    c.send_text("hello").await;
    c.send_text("world!").await;
    assert_eq!(c.recv_text().await, "hello");
    assert_eq!(c.recv_text().await, "world!");
    c.close().await;
    let mut other = wsd.connect("/other").await;
    let _ = recv_pid(&mut other).await;
    drop(other);
    assert!(
        wait_until(SECS5, || wsd.count_log("| DISCONNECT") == 2),
        "log: {:?}",
        wsd.stdout()
    );

    let log = wsd.stdout();
    let connects: Vec<&String> = log.iter().filter(|l| l.ends_with("| CONNECT")).collect();
    let disconnects: Vec<&String> = log.iter().filter(|l| l.contains("| DISCONNECT")).collect();
    assert_eq!(connects.len(), 2, "{connects:?}");
    assert_eq!(disconnects.len(), 2, "{disconnects:?}");
    let mut connect_ids: Vec<&str> = connects
        .iter()
        .map(|l| pair(l, "id").expect("an id"))
        .collect();
    let mut disconnect_ids: Vec<&str> = disconnects
        .iter()
        .map(|l| pair(l, "id").expect("an id"))
        .collect();
    connect_ids.sort();
    disconnect_ids.sort();
    assert_eq!(connect_ids, disconnect_ids);
    assert_ne!(connect_ids[0], connect_ids[1]);

    let url = format!("http://127.0.0.1:{}/some/path?q=1", wsd.port);
    let line = disconnects
        .iter()
        .find(|l| pair(l, "url") == Some(url.as_str()))
        .expect("a DISCONNECT for /some/path");
    assert!(line.contains(" | ACCESS | session    | "), "{line}");
    assert_eq!(pair(line, "pid"), Some(pid.to_string().as_str()), "{line}");
    assert_eq!(pair(line, "remote"), Some("127.0.0.1"), "{line}");
    // "DISCONNECT after 0.123s, exit status 0, in 2 msgs / 13 bytes, out 3 msgs / N bytes":
    // bytes in count the newline added to each message; out counts the pid line too.
    let tail = line
        .split("| DISCONNECT after ")
        .nth(1)
        .expect("DISCONNECT after");
    let (secs, rest) = tail.split_once("s, ").expect("a duration");
    assert!(
        secs.parse::<f64>().is_ok_and(|s| s > 0.0 && s < 5.0),
        "duration {secs:?}"
    );
    let out_bytes = pid.to_string().len() + "hello".len() + "world!".len();
    assert_eq!(
        rest,
        format!("exit status 0, in 2 msgs / 13 bytes, out 3 msgs / {out_bytes} bytes")
    );
}

/// A script that another process still holds open for writing cannot be executed for a moment
/// (ETXTBSY, as when an editor or a deploy has just written it): wsd tries again briefly
/// instead of failing the connection.
#[tokio::test]
async fn a_script_still_open_for_writing_starts_once_the_writer_lets_go() {
    let dir = TempDir::new("txtbsy");
    let script = dir.script("busy.sh", "echo started");
    let wsd = Wsd::start(&[s(&script)]);
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&script)
        .unwrap();
    // Closed 20 ms after the handshake starts; wsd's retries span about 120 ms.
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(writer);
    });
    let mut c = wsd.connect("/").await;
    assert_eq!(c.recv_text().await, "started");
    closer.join().unwrap();
    assert!(
        wsd.stdout().iter().all(|l| !l.contains("Could not launch")),
        "{:?}",
        wsd.stdout()
    );
}
