//! What travels between the client and the program: lines and messages in text mode, bytes in
//! binary mode, `--passstderr` JSON, protocol errors, close codes and pings.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const SECS5: Duration = Duration::from_secs(5);

/// Every binary message until the close frame, and the close frame.
async fn read_binary_to_close(c: &mut Client) -> (Vec<Vec<u8>>, Option<(u16, String)>) {
    let mut msgs = Vec::new();
    loop {
        match c.next_event(SECS5).await {
            Event::Binary(b) => msgs.push(b),
            Event::Close(close) => return (msgs, close),
            other => {
                panic!("expected a binary message or a close frame, got {other:?} after {msgs:?}")
            }
        }
    }
}

/// Waits until `file` holds exactly `want` (the program writes it as stdin arrives and ends at
/// EOF); returns what it holds at the deadline otherwise.
fn file_content_becomes(file: &Path, want: &[u8], within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    wait_until(within, || {
        got = std::fs::read(file).unwrap_or_default();
        got == want
    });
    got
}

/// A script that writes its stdin to the file named by its first argument.
fn stdin_to_file(dir: &TempDir) -> (PathBuf, PathBuf) {
    // Not `exec`: the shell keeps stdout open (a closed stdout ends the session).
    let script = dir.script("to-file.sh", r#"cat > "$1""#);
    (script, dir.path().join("stdin.bin"))
}

// ---- text mode ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stdout_line_is_one_text_message_without_its_line_ending() {
    let dir = TempDir::new("lines");
    let script = dir.script("lines.sh", r"printf 'one\ntwo\r\n\nthree\r\n'");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["one", "two", "", "three"]);
    assert_eq!(close, Some((1000, String::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_is_sent_as_soon_as_the_program_writes_it() {
    let dir = TempDir::new("push");
    let script = dir.script("push.sh", "echo first\nexec sleep 30");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let t0 = Instant::now();
    assert_eq!(
        c.next_event(Duration::from_secs(1)).await,
        Event::Text("first".into())
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_line_without_a_newline_arrives_at_eof_before_the_close_frame() {
    let dir = TempDir::new("lastline");
    let script = dir.script("last.sh", r"printf 'a\nlast words'");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["a", "last words"]);
    assert_eq!(close, Some((1000, String::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_message_is_written_to_stdin_followed_by_a_newline_whitespace_intact() {
    let dir = TempDir::new("stdin");
    let (script, file) = stdin_to_file(&dir);
    let wsd = GracefulWsd::start(&[s(&script), s(&file)]);
    let mut c = wsd.connect("/").await;
    for msg in ["  leading", "trailing \t ", "", "in  the\tmiddle", " "] {
        c.send_text(msg).await;
    }
    let want = b"  leading\ntrailing \t \n\nin  the\tmiddle\n \n";
    let got = file_content_becomes(&file, want, SECS5);
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_right_before_the_close_frame_still_reach_stdin() {
    let dir = TempDir::new("stdinclose");
    // A program that reads slower than the client writes (so messages are still waiting for
    // stdin when the close frame is read) and that outlives SIGINT and SIGTERM, finishing well
    // before the SIGKILL at 850 ms.
    let script = dir.script(
        "slow-reader.sh",
        r#"trap '' INT TERM
while IFS= read -r l; do printf '%s\n' "$l"; sleep 0.002; done > "$1""#,
    );
    let file = dir.path().join("stdin.txt");
    let wsd = GracefulWsd::start(&[s(&script), s(&file)]);
    let mut c = wsd.connect("/").await;
    // 100 KB: more than the pipe holds.
    let msgs: Vec<String> = (0..100)
        .map(|i| format!("message {i:03} {}", "x".repeat(1000)))
        .collect();
    for msg in &msgs {
        c.ws.feed(Message::Text(msg.as_str().into())).await.unwrap();
    }
    c.close().await;
    let want: String = msgs.iter().map(|m| format!("{m}\n")).collect();
    let got = file_content_becomes(&file, want.as_bytes(), SECS5);
    let got = String::from_utf8_lossy(&got);
    let last = got.lines().last().map(|l| l[..11.min(l.len())].to_string());
    assert_eq!(
        got.lines().count(),
        msgs.len(),
        "the last line written: {last:?}"
    );
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_back_to_back_reach_stdin_whole_and_in_order_around_a_large_one() {
    // Small messages that arrive together are written to stdin together; one over 64 KiB is
    // written by itself: the order and every byte must survive both.
    let wsd = Wsd::start(&["cat"]);
    let mut c = wsd.connect("/").await;
    let mut msgs: Vec<String> = (0..300).map(|i| format!("small {i:03}")).collect();
    msgs.push(format!("large {}", "L".repeat(100_000)));
    msgs.extend((300..600).map(|i| format!("small {i:03}")));
    for msg in &msgs {
        c.ws.feed(Message::Text(msg.as_str().into())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    for (i, want) in msgs.iter().enumerate() {
        let got = c.recv_text().await;
        assert!(
            got == *want,
            "message {i}: {} bytes, wanted {}",
            got.len(),
            want.len()
        );
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_message_with_embedded_newlines_becomes_several_lines() {
    let wsd = GracefulWsd::start(&["cat"]);
    let mut c = wsd.connect("/").await;
    c.send_text("x\ny\n\nz").await;
    for want in ["x", "y", "", "z"] {
        assert_eq!(c.recv_text().await, want);
    }
    c.send_text("after").await;
    assert_eq!(c.recv_text().await, "after");
    c.close().await;
}

// ---- --max-line-bytes ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_longer_than_max_line_bytes_arrives_in_pieces_of_that_size() {
    let dir = TempDir::new("longline");
    // 25 and 23 bytes, written in one go (so the whole line with its newline is in the pipe).
    let script = dir.script(
        "long.sh",
        "printf '%s\\n' abcdefghijklmnopqrstuvwxy short 0123456789ABCDEFGHIJKLM",
    );
    let wsd = GracefulWsd::start(&["--max-line-bytes=10", s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(
        texts,
        [
            "abcdefghij",
            "klmnopqrst",
            "uvwxy",
            "short",
            "0123456789",
            "ABCDEFGHIJ",
            "KLM"
        ]
    );
    assert_eq!(close, Some((1000, String::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_line_written_slowly_arrives_in_pieces_of_max_line_bytes() {
    let dir = TempDir::new("slowline");
    // The line trickles in, so the limit is reached before its newline is in the buffer.
    let script = dir.script(
        "slow.sh",
        "for p in abcdefg hijklmn opqrstu vwxy; do printf %s $p; sleep 0.05; done; echo",
    );
    let wsd = GracefulWsd::start(&["--max-line-bytes=10", s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["abcdefghij", "klmnopqrst", "uvwxy"]);
    assert_eq!(close, Some((1000, String::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_exactly_max_line_bytes_is_one_message_even_when_its_newline_comes_later() {
    let dir = TempDir::new("exactline");
    let script = dir.script("exact.sh", "printf 0123456789; sleep 0.2; echo; echo next");
    let wsd = GracefulWsd::start(&["--max-line-bytes=10", s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["0123456789", "next"]);
    assert_eq!(close, Some((1000, String::new())));
    assert!(wsd.wait_log("DISCONNECT", SECS5).is_some());
    assert_eq!(
        wsd.count_log("--max-line-bytes"),
        0,
        "log: {:?}",
        wsd.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_twice_max_line_bytes_is_exactly_two_pieces_even_when_its_newline_comes_later() {
    let dir = TempDir::new("doubleline");
    let script = dir.script(
        "double.sh",
        "printf 0123456789ABCDEFGHIJ; sleep 0.2; echo; echo next",
    );
    let wsd = GracefulWsd::start(&["--max-line-bytes=10", s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["0123456789", "ABCDEFGHIJ", "next"]);
    assert_eq!(close, Some((1000, String::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splitting_long_lines_is_warned_about_once_in_the_log() {
    let dir = TempDir::new("longwarn");
    let script = dir.script(
        "long.sh",
        "printf '%s\\n' abcdefghijklmnopqrstuvwxy ok 0123456789ABCDEFGHIJKLM",
    );
    let wsd = GracefulWsd::start(&["--max-line-bytes=10", s(&script)]);
    let mut c = wsd.connect("/").await;
    let (_, close) = c.read_to_close(SECS5).await;
    assert_eq!(close.map(|c| c.0), Some(1000));
    assert!(
        wsd.wait_log("DISCONNECT", SECS5).is_some(),
        "log: {:?}",
        wsd.stdout()
    );
    let warnings: Vec<String> = wsd
        .stdout()
        .into_iter()
        .filter(|l| l.contains("--max-line-bytes"))
        .collect();
    assert_eq!(warnings.len(), 1, "warnings: {warnings:?}");
}

// ---- invalid UTF-8 from the program --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_output_arrives_as_text_with_replacement_characters() {
    let dir = TempDir::new("badutf8");
    let script = dir.script(
        "bad.sh",
        r"printf 'a\377b\n'; printf 'c\376\375d\n'; printf 'ok \303\251\n'",
    );
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["a\u{FFFD}b", "c\u{FFFD}\u{FFFD}d", "ok é"]);
    assert_eq!(close, Some((1000, String::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_output_is_warned_about_once_per_connection() {
    let dir = TempDir::new("badwarn");
    let script = dir.script("bad.sh", r"printf 'a\377b\n'; printf 'c\376d\n'");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let warnings = || {
        wsd.stdout()
            .into_iter()
            .filter(|l| l.contains("invalid UTF-8"))
            .collect::<Vec<_>>()
    };

    let mut c = wsd.connect("/").await;
    assert_eq!(c.read_to_close(SECS5).await.0.len(), 2);
    assert!(wait_until(SECS5, || wsd.count_log("DISCONNECT") == 1));
    assert_eq!(
        warnings().len(),
        1,
        "after one connection: {:?}",
        warnings()
    );

    let mut c = wsd.connect("/").await;
    assert_eq!(c.read_to_close(SECS5).await.0.len(), 2);
    assert!(wait_until(SECS5, || wsd.count_log("DISCONNECT") == 2));
    assert_eq!(
        warnings().len(),
        2,
        "after two connections: {:?}",
        warnings()
    );
}

// ---- binary mode ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_sends_stdout_bytes_as_binary_messages() {
    let dir = TempDir::new("binout");
    let script = dir.script("bin.sh", r"printf 'a\000b\377\n\r\nz'");
    let wsd = GracefulWsd::start(&["--binary", s(&script)]);
    let mut c = wsd.connect("/").await;
    let (msgs, close) = read_binary_to_close(&mut c).await;
    assert_eq!(msgs.concat(), b"a\0b\xff\n\r\nz");
    assert_eq!(close, Some((1000, String::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_writes_client_binary_messages_to_stdin_byte_for_byte() {
    let dir = TempDir::new("binin");
    let (script, file) = stdin_to_file(&dir);
    let wsd = GracefulWsd::start(&["--binary", s(&script), s(&file)]);
    let mut c = wsd.connect("/").await;
    let first: Vec<u8> = vec![0, 0xff, b'\n', b'\r', b'x', 0, 0xc3];
    let second: Vec<u8> = (0..=255u8).collect();
    c.send_binary(&first).await;
    c.send_binary(&second).await;
    let want = [first, second].concat();
    assert_eq!(file_content_becomes(&file, &want, SECS5), want);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_appends_a_newline_to_text_messages() {
    let dir = TempDir::new("bintext");
    let (script, file) = stdin_to_file(&dir);
    let wsd = GracefulWsd::start(&["--binary", s(&script), s(&file)]);
    let mut c = wsd.connect("/").await;
    c.send_text("hi there").await;
    c.send_binary(b"\x00raw").await;
    c.send_text("").await;
    let want = b"hi there\n\x00raw\n";
    assert_eq!(file_content_becomes(&file, want, SECS5), want);
    c.close().await;
}

// ---- the protocol --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_message_with_invalid_utf8_fails_the_connection_with_1007() {
    let wsd = GracefulWsd::start(&["cat"]);
    let mut c = wsd.connect("/").await;
    let frame = Frame::message(b"a\xffb".to_vec(), OpCode::Data(OpData::Text), true);
    c.ws.send(Message::Frame(frame))
        .await
        .expect("send the raw frame");
    match c.next_event(SECS5).await {
        Event::Close(Some((code, reason))) => {
            assert_eq!(code, 1007, "reason: {reason}");
            assert!(
                reason.starts_with("invalid UTF-8 in a text message"),
                "reason: {reason}"
            );
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_maxframesize_fails_the_connection_with_1009() {
    let wsd = GracefulWsd::start(&["--maxframesize=1000", "cat"]);
    let mut c = wsd.connect("/").await;
    let at_limit = "a".repeat(1000);
    c.send_text(&at_limit).await;
    assert_eq!(c.recv_text().await, at_limit);
    c.send_text(&"b".repeat(1001)).await;
    assert_eq!(
        c.next_event(SECS5).await,
        Event::Close(Some((
            1009,
            "message of 1001 bytes is over the limit of 1000".into()
        )))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_is_answered_with_a_pong_carrying_the_same_payload() {
    let wsd = GracefulWsd::start(&["cat"]);
    let mut c = wsd.connect("/").await;
    let payload: &[u8] = b"are you there? \x00\xff";
    c.ws.send(Message::Ping(payload.to_vec().into()))
        .await
        .unwrap();
    let got = tokio::time::timeout(SECS5, c.ws.next())
        .await
        .expect("an answer in time");
    match got {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], payload),
        other => panic!("expected a pong, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_frame_from_the_client_is_answered_with_a_close_frame() {
    let wsd = GracefulWsd::start(&["cat"]);
    let mut c = wsd.connect("/").await;
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    c.ws.send(Message::Close(Some(bye))).await.unwrap();
    assert_eq!(
        c.next_event(SECS5).await,
        Event::Close(Some((1000, "bye".into())))
    );
    assert_eq!(c.next_event(SECS5).await, Event::Eof);
}

// ---- how the program ended -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_program_exits_0_every_line_arrives_then_close_1000() {
    let dir = TempDir::new("exit0");
    let script = dir.script(
        "many.sh",
        r#"i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; exit 0"#,
    );
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    let want: Vec<String> = (0..3000).map(|i| format!("line {i}")).collect();
    assert_eq!(texts.len(), want.len());
    assert_eq!(texts, want);
    assert_eq!(close, Some((1000, String::new())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_program_exits_with_status_3_the_close_is_1011_exit_status_3() {
    let dir = TempDir::new("exit3");
    let script = dir.script("three.sh", "echo a\necho b\nexit 3");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["a", "b"]);
    assert_eq!(close, Some((1011, "exit status 3".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_program_is_killed_by_a_signal_the_close_is_1011_naming_the_signal() {
    let dir = TempDir::new("sig9");
    let script = dir.script("nine.sh", "echo a\nkill -9 $$");
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    let (texts, close) = c.read_to_close(SECS5).await;
    assert_eq!(texts, ["a"]);
    let (code, reason) = close.expect("a close frame with a code");
    assert_eq!(code, 1011);
    assert!(reason.contains("signal 9"), "reason: {reason}");
}

// ---- --passstderr --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passstderr_sends_both_streams_as_json_exactly_as_go_encodes_it() {
    let dir = TempDir::new("passstderr");
    let script = dir.script(
        "both.sh",
        r#"printf 'x<y>&"z\\\tq\303\251\n'
printf 'e<rr\n' >&2"#,
    );
    let wsd = GracefulWsd::start(&["--passstderr", s(&script)]);
    let mut c = wsd.connect("/").await;
    let (mut texts, close) = c.read_to_close(SECS5).await;
    texts.sort();
    let mut want = vec![
        r#"{"stream":"stdout","data":"x\u003cy\u003e\u0026\"z\\\tqé"}"#.to_string(),
        r#"{"stream":"stderr","data":"e\u003crr"}"#.to_string(),
    ];
    want.sort();
    assert_eq!(texts, want);
    assert_eq!(close, Some((1000, String::new())));
}

// ---- --pingms --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pingms_the_client_receives_pings() {
    let wsd = GracefulWsd::start(&["--pingms=200", "cat"]);
    let mut c = wsd.connect("/").await;
    let first = tokio::time::timeout(Duration::from_secs(1), c.ws.next())
        .await
        .expect("a ping within 1 s");
    assert!(matches!(first, Some(Ok(Message::Ping(_)))), "got {first:?}");
    let second = tokio::time::timeout(Duration::from_secs(1), c.ws.next())
        .await
        .expect("another ping within 1 s");
    assert!(
        matches!(second, Some(Ok(Message::Ping(_)))),
        "got {second:?}"
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stays_silent_while_answering_pings_is_kept() {
    let wsd = GracefulWsd::start(&["--pingms=200", "cat"]);
    let mut c = wsd.connect("/").await;
    // tungstenite answers the pings while we wait for data that never comes.
    assert_eq!(
        c.next_event(Duration::from_millis(1500)).await,
        Event::Timeout
    );
    assert_eq!(wsd.count_log("DISCONNECT"), 0, "log: {:?}", wsd.stdout());
    c.send_text("still here").await;
    assert_eq!(c.recv_text().await, "still here");
    c.close().await;
}

#[test]
fn a_client_that_never_answers_pings_is_disconnected_and_its_program_ended() {
    let wsd = GracefulWsd::start(&["--pingms=200", "cat"]);
    let t0 = Instant::now();
    let _silent = raw_ws_upgrade(wsd.port, "/");
    let mut kids = Vec::new();
    assert!(wait_until(SECS5, || {
        kids = children_of(wsd.pid());
        kids.len() == 1
    }));
    let child = kids[0];
    let line = wsd.wait_log("DISCONNECT", Duration::from_millis(2500));
    assert!(
        line.is_some(),
        "no DISCONNECT after {:?}; log: {:?}",
        t0.elapsed(),
        wsd.stdout()
    );
    assert!(
        wait_gone(child, Duration::from_secs(1)),
        "the program {child} is still running"
    );
}
