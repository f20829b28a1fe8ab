//! The command line, through the real binary: every websocketd flag in every spelling Go's flag
//! package accepts (each proven by what the server then does), bad flags and their exit codes,
//! and the listeners (`--port`, `--address`, `--unixsocket`).
mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const FIVE_SECONDS: Duration = Duration::from_secs(5);

// ---- helpers -----------------------------------------------------------------------------

/// The four spellings of a flag with a value: `--f=v`, `--f v`, `-f=v`, `-f v`.
fn value_spellings(flag: &str, value: &str) -> Vec<Vec<String>> {
    vec![
        vec![format!("--{flag}={value}")],
        vec![format!("--{flag}"), value.to_string()],
        vec![format!("-{flag}={value}")],
        vec![format!("-{flag}"), value.to_string()],
    ]
}

/// The spellings that turn a boolean flag on: bare, `=true` and `=1`, with one or two dashes.
fn true_spellings(flag: &str) -> Vec<Vec<String>> {
    ["--{}", "-{}", "--{}=true", "-{}=true", "--{}=1", "-{}=1"]
        .iter()
        .map(|p| vec![p.replace("{}", flag)])
        .collect()
}

/// The spellings that turn a boolean flag off.
fn false_spellings(flag: &str) -> Vec<Vec<String>> {
    ["--{}=false", "-{}=false", "--{}=0", "-{}=0"]
        .iter()
        .map(|p| vec![p.replace("{}", flag)])
        .collect()
}

/// Starts wsd on a free loopback port with `spelled` then `rest` (flags and COMMAND).
fn start_spelled(spelled: &[String], rest: &[&str]) -> Wsd {
    start_spelled_with(spelled, rest, |_| {})
}

fn start_spelled_with(spelled: &[String], rest: &[&str], adjust: impl Fn(&mut Command)) -> Wsd {
    let mut args: Vec<&str> = spelled.iter().map(String::as_str).collect();
    args.extend_from_slice(rest);
    Wsd::start_with(&args, adjust)
}

/// Spawns wsd with exactly `args` (no --port or --address added) without waiting for it.
fn spawn_exact(args: &[String], port: u16) -> Wsd {
    let mut cmd = Command::new(wsd_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Wsd::spawn(cmd, port)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn wait_for_unix(wsd: &Wsd, path: &Path) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(path).is_ok()
        }),
        "wsd did not listen on {}; stdout {:?} stderr {:?}",
        path.display(),
        wsd.stdout(),
        wsd.stderr()
    );
}

/// Connects, sends `text`, returns the first event back (the server runs `cat`).
async fn echo_event(wsd: &Wsd, text: &str) -> Event {
    let mut c = wsd.connect("/").await;
    c.send_text(text).await;
    c.next_event(FIVE_SECONDS).await
}

type UnixWs = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

/// A WebSocket client over a Unix socket.
async fn unix_connect(path: &Path) -> UnixWs {
    let stream = tokio::time::timeout(FIVE_SECONDS, tokio::net::UnixStream::connect(path))
        .await
        .expect("unix connect in time")
        .expect("unix connect");
    let (ws, _) = tokio::time::timeout(
        FIVE_SECONDS,
        tokio_tungstenite::client_async("ws://localhost/", stream),
    )
    .await
    .expect("handshake in time")
    .expect("handshake over the unix socket succeeds");
    ws
}

/// Sends `text` over a Unix-socket WebSocket and returns the text that comes back.
async fn unix_echo(ws: &mut UnixWs, text: &str) -> String {
    ws.send(Message::Text(text.into())).await.expect("send");
    let deadline = tokio::time::Instant::now() + FIVE_SECONDS;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message over the unix socket, got {other:?}"),
        }
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---- every flag, every spelling ----------------------------------------------------------

#[tokio::test]
async fn port_in_every_go_spelling_makes_wsd_listen_on_that_port() {
    for spelling in value_spellings("port", "PORT") {
        let port = free_port();
        let mut args: Vec<String> = spelling
            .iter()
            .map(|s| s.replace("PORT", &port.to_string()))
            .collect();
        args.extend(strings(&["--address=127.0.0.1", "cat"]));
        let wsd = spawn_exact(&args, port);
        wsd.assert_listening(port);
        assert_eq!(
            echo_event(&wsd, "hi").await,
            Event::Text("hi".into()),
            "{spelling:?}"
        );
    }
}

#[tokio::test]
async fn address_in_every_go_spelling_binds_that_interface() {
    for spelling in value_spellings("address", "127.0.0.1") {
        let port = free_port();
        let mut args = vec![format!("--port={port}")];
        args.extend(spelling.iter().cloned());
        args.push("cat".into());
        let wsd = spawn_exact(&args, port);
        wsd.assert_listening(port);
        // Without --address wsd would announce the machine's name (all interfaces).
        let want = format!("Starting WebSocket server   : ws://127.0.0.1:{port}/");
        assert!(
            wsd.wait_log(&want, FIVE_SECONDS).is_some(),
            "{spelling:?}: no {want:?} in {:?}",
            wsd.stdout()
        );
        assert_eq!(
            echo_event(&wsd, "hi").await,
            Event::Text("hi".into()),
            "{spelling:?}"
        );
    }
}

#[tokio::test]
async fn binary_bare_or_true_in_every_spelling_sends_binary_messages() {
    for spelling in true_spellings("binary") {
        let wsd = start_spelled(&spelling, &["cat"]);
        assert_eq!(
            echo_event(&wsd, "hi").await,
            Event::Binary(b"hi\n".to_vec()),
            "{spelling:?}"
        );
    }
}

#[tokio::test]
async fn binary_false_in_every_spelling_sends_text_messages() {
    for spelling in false_spellings("binary") {
        let wsd = start_spelled(&spelling, &["cat"]);
        assert_eq!(
            echo_event(&wsd, "hi").await,
            Event::Text("hi".into()),
            "{spelling:?}"
        );
    }
}

#[tokio::test]
async fn passstderr_in_every_spelling_tags_messages_with_their_stream() {
    let dir = TempDir::new("cli-passstderr");
    let script = dir.script("out.sh", "echo out\nsleep 5");
    for spelling in true_spellings("passstderr") {
        let wsd = start_spelled(&spelling, &[script.to_str().unwrap()]);
        let mut c = wsd.connect("/").await;
        assert_eq!(
            c.next_event(FIVE_SECONDS).await,
            Event::Text(r#"{"stream":"stdout","data":"out"}"#.into()),
            "{spelling:?}"
        );
    }
}

#[tokio::test]
async fn maxframesize_in_every_spelling_closes_on_a_larger_message_with_1009() {
    for spelling in value_spellings("maxframesize", "8") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let mut c = wsd.connect("/").await;
        c.send_text("12345678").await;
        assert_eq!(
            c.next_event(FIVE_SECONDS).await,
            Event::Text("12345678".into()),
            "{spelling:?}"
        );
        c.send_text("123456789").await;
        let (texts, close) = c.read_to_close(FIVE_SECONDS).await;
        assert_eq!(texts, Vec::<String>::new(), "{spelling:?}");
        assert_eq!(close.map(|c| c.0), Some(1009), "{spelling:?}");
    }
}

#[tokio::test]
async fn max_line_bytes_in_every_spelling_splits_long_lines() {
    let dir = TempDir::new("cli-maxline");
    let script = dir.script("long.sh", "echo abcdefg");
    for spelling in value_spellings("max-line-bytes", "3") {
        let wsd = start_spelled(&spelling, &[script.to_str().unwrap()]);
        let mut c = wsd.connect("/").await;
        let (texts, close) = c.read_to_close(FIVE_SECONDS).await;
        assert_eq!(texts, vec!["abc", "def", "g"], "{spelling:?}");
        assert_eq!(close.map(|c| c.0), Some(1000), "{spelling:?}");
    }
}

#[tokio::test]
async fn dir_in_every_spelling_serves_the_scripts_in_it() {
    let dir = TempDir::new("cli-dir");
    dir.script("hello.sh", "echo hello from dir");
    for spelling in value_spellings("dir", dir.path().to_str().unwrap()) {
        let wsd = start_spelled(&spelling, &[]);
        let mut c = wsd.connect("/hello.sh").await;
        assert_eq!(
            c.next_event(FIVE_SECONDS).await,
            Event::Text("hello from dir".into()),
            "{spelling:?}"
        );
    }
}

#[tokio::test]
async fn passenv_in_every_spelling_passes_the_named_variable() {
    let dir = TempDir::new("cli-passenv");
    let script = dir.script("show.sh", "echo \"foo=$WSD_TEST_FOO\"");
    for spelling in value_spellings("passenv", "WSD_TEST_FOO") {
        let wsd = start_spelled_with(&spelling, &[script.to_str().unwrap()], |c| {
            c.env("WSD_TEST_FOO", "bar");
        });
        let mut c = wsd.connect("/").await;
        assert_eq!(
            c.next_event(FIVE_SECONDS).await,
            Event::Text("foo=bar".into()),
            "{spelling:?}"
        );
    }
}

/// The name `getent hosts 127.0.0.1` gives, if any.
fn loopback_name() -> Option<String> {
    let out = Command::new("getent")
        .args(["hosts", "127.0.0.1"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(1).map(str::to_string)
}

#[tokio::test]
async fn reverselookup_in_every_true_spelling_names_the_client_host() {
    let Some(name) = loopback_name() else {
        println!("skipped: this machine has no name for 127.0.0.1 (getent hosts 127.0.0.1)");
        return;
    };
    let dir = TempDir::new("cli-reverse");
    let script = dir.script("host.sh", "echo \"$REMOTE_HOST\"");
    for spelling in true_spellings("reverselookup") {
        let wsd = start_spelled(&spelling, &[script.to_str().unwrap()]);
        let mut c = wsd.connect("/").await;
        assert_eq!(
            c.next_event(FIVE_SECONDS).await,
            Event::Text(name.clone()),
            "{spelling:?}"
        );
    }
}

#[tokio::test]
async fn maxforks_in_every_spelling_refuses_a_session_beyond_the_limit() {
    for spelling in value_spellings("maxforks", "1") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let _held = wsd.connect("/").await;
        let resp = raw_http(wsd.port, &upgrade_request("/", ""));
        assert_eq!(status_of(&resp), 429, "{spelling:?}: {resp}");
    }
}

/// Connects, waits for the child, drops the connection, and reports whether the child was still
/// alive 700 ms later and whether it was gone within 4 s.
async fn child_after_client_leaves(wsd: &Wsd) -> (bool, bool) {
    let c = wsd.connect("/").await;
    let deadline = Instant::now() + FIVE_SECONDS;
    let child = loop {
        if let Some(&pid) = children_of(wsd.pid()).first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no child started");
        sleep_ms(10).await;
    };
    drop(c);
    let left = Instant::now();
    sleep_ms(700).await;
    let alive_at_700ms = alive(child);
    while alive(child) && left.elapsed() < Duration::from_secs(4) {
        sleep_ms(10).await;
    }
    (alive_at_700ms, !alive(child))
}

#[tokio::test]
async fn closems_in_every_spelling_delays_the_signals_after_the_client_leaves() {
    // `sleep` ignores its closed stdin; SIGINT ends it. Without --closems SIGINT comes 100 ms
    // after the client leaves; with --closems=1500 not before 1600 ms.
    let servers: Vec<(Vec<String>, Wsd)> = value_spellings("closems", "1500")
        .into_iter()
        .map(|s| {
            let w = start_spelled(&s, &["sleep", "30"]);
            (s, w)
        })
        .collect();
    let results =
        futures_util::future::join_all(servers.iter().map(|(_, w)| child_after_client_leaves(w)))
            .await;
    for ((spelling, _), (alive_at_700ms, gone)) in servers.iter().zip(results) {
        assert!(
            alive_at_700ms,
            "{spelling:?}: the child was signalled before the --closems grace ran out"
        );
        assert!(gone, "{spelling:?}: the child was not ended within 4 s");
    }
}

#[tokio::test]
async fn without_closems_the_child_is_gone_within_700_ms_of_the_client_leaving() {
    // The control for the test above: its 700 ms check would catch an ignored --closems.
    let wsd = Wsd::start(&["sleep", "30"]);
    let (alive_at_700ms, gone) = child_after_client_leaves(&wsd).await;
    assert!(
        !alive_at_700ms,
        "the child outlived the default 100 ms grace by far"
    );
    assert!(gone);
}

#[tokio::test]
async fn pingms_in_every_spelling_sends_pings() {
    for spelling in value_spellings("pingms", "100") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let mut c = wsd.connect("/").await;
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match c.ws.next().await {
                    Some(Ok(Message::Ping(_))) => return true,
                    Some(Ok(_)) => continue,
                    _ => return false,
                }
            }
        })
        .await;
        assert_eq!(got, Ok(true), "{spelling:?}: no ping within 2 s");
    }
}

#[tokio::test]
async fn origin_in_every_spelling_refuses_other_origins() {
    for spelling in value_spellings("origin", "trusted.com") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let evil = raw_http(
            wsd.port,
            &upgrade_request("/", "Origin: http://evil.com\r\n"),
        );
        assert_eq!(status_of(&evil), 403, "{spelling:?}: {evil}");
        let good = raw_http(
            wsd.port,
            &upgrade_request("/", "Origin: http://trusted.com\r\n"),
        );
        assert_eq!(status_of(&good), 101, "{spelling:?}: {good}");
    }
}

#[tokio::test]
async fn sameorigin_bare_true_or_1_in_every_spelling_refuses_a_foreign_origin() {
    for spelling in true_spellings("sameorigin") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let resp = raw_http(
            wsd.port,
            &upgrade_request("/", "Origin: http://evil.com\r\n"),
        );
        assert_eq!(status_of(&resp), 403, "{spelling:?}: {resp}");
    }
}

#[tokio::test]
async fn sameorigin_false_in_every_spelling_accepts_a_foreign_origin() {
    for spelling in false_spellings("sameorigin") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let resp = raw_http(
            wsd.port,
            &upgrade_request("/", "Origin: http://evil.com\r\n"),
        );
        assert_eq!(status_of(&resp), 101, "{spelling:?}: {resp}");
    }
}

#[tokio::test]
async fn header_in_every_spelling_adds_the_header_to_the_upgrade() {
    for spelling in value_spellings("header", "X-A: 1") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let resp = raw_http(wsd.port, &upgrade_request("/", ""));
        assert_eq!(status_of(&resp), 101, "{spelling:?}: {resp}");
        assert_eq!(
            header_values(&resp, "X-A"),
            vec!["1"],
            "{spelling:?}: {resp}"
        );
    }
}

#[tokio::test]
async fn header_ws_in_every_spelling_adds_the_header_to_the_upgrade() {
    for spelling in value_spellings("header-ws", "X-Ws: 2") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let resp = raw_http(wsd.port, &upgrade_request("/", ""));
        assert_eq!(status_of(&resp), 101, "{spelling:?}: {resp}");
        assert_eq!(
            header_values(&resp, "X-Ws"),
            vec!["2"],
            "{spelling:?}: {resp}"
        );
    }
}

#[tokio::test]
async fn header_http_in_every_spelling_adds_the_header_to_plain_responses() {
    for spelling in value_spellings("header-http", "X-Http: 3") {
        let wsd = start_spelled(&spelling, &["cat"]);
        let resp = raw_http(
            wsd.port,
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status_of(&resp), 426, "{spelling:?}: {resp}");
        assert_eq!(
            header_values(&resp, "X-Http"),
            vec!["3"],
            "{spelling:?}: {resp}"
        );
    }
}

#[tokio::test]
async fn loglevel_debug_in_every_spelling_logs_debug_lines() {
    let dir = TempDir::new("cli-loglevel");
    let script = dir.script("hi.sh", "echo hi");
    for spelling in value_spellings("loglevel", "debug") {
        let wsd = start_spelled(&spelling, &[script.to_str().unwrap()]);
        let mut c = wsd.connect("/").await;
        let _ = c.read_to_close(FIVE_SECONDS).await;
        assert!(
            wsd.wait_log("| DEBUG  |", FIVE_SECONDS).is_some(),
            "{spelling:?}: no DEBUG line in {:?}",
            wsd.stdout()
        );
    }
}

#[tokio::test]
async fn loglevel_error_in_every_spelling_hides_info_and_access_lines() {
    let dir = TempDir::new("cli-loglevel-error");
    let script = dir.script("err.sh", "echo to-stderr >&2\nexec cat");
    for spelling in value_spellings("loglevel", "error") {
        let wsd = start_spelled(&spelling, &[script.to_str().unwrap()]);
        assert_eq!(
            echo_event(&wsd, "hi").await,
            Event::Text("hi".into()),
            "{spelling:?}"
        );
        // The child's stderr is logged at error level, after the start-up lines and CONNECT.
        assert!(
            wsd.wait_log("to-stderr", FIVE_SECONDS).is_some(),
            "{spelling:?}: {:?}",
            wsd.stdout()
        );
        let lines = wsd.stdout();
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("| INFO ") && !l.contains("| ACCESS |")),
            "{spelling:?}: {lines:?}"
        );
    }
}

#[tokio::test]
async fn unixsocket_in_every_spelling_listens_on_the_socket() {
    let dir = TempDir::new("cli-unix-spell");
    for (i, spelling) in value_spellings("unixsocket", "SOCK")
        .into_iter()
        .enumerate()
    {
        let sock = dir.path().join(format!("s{i}.sock"));
        let spelling: Vec<String> = spelling
            .iter()
            .map(|s| s.replace("SOCK", sock.to_str().unwrap()))
            .collect();
        let wsd = start_spelled(&spelling, &["cat"]);
        wait_for_unix(&wsd, &sock);
        let mut ws = unix_connect(&sock).await;
        assert_eq!(unix_echo(&mut ws, "hi").await, "hi", "{spelling:?}");
    }
}

#[tokio::test]
async fn command_arguments_that_look_like_flags_reach_the_child_untouched() {
    let dir = TempDir::new("cli-args");
    let script = dir.script("args.sh", "for a in \"$@\"; do echo \"$a\"; done");
    let wsd = Wsd::start(&[
        script.to_str().unwrap(),
        "-l",
        "--port",
        "-port=5",
        "--binary",
        "--nosuchflag",
        "-h",
    ]);
    let mut c = wsd.connect("/").await;
    let mut events = Vec::new();
    loop {
        match c.next_event(FIVE_SECONDS).await {
            Event::Close(_) => break,
            e @ (Event::Eof | Event::Timeout) => {
                panic!("expected a close after {events:?}, got {e:?}")
            }
            e => events.push(e),
        }
    }
    // Text messages: the --binary after COMMAND was not taken as wsd's flag.
    let want: Vec<Event> = ["-l", "--port", "-port=5", "--binary", "--nosuchflag", "-h"]
        .iter()
        .map(|a| Event::Text(a.to_string()))
        .collect();
    assert_eq!(events, want);
}

// ---- bad flags -----------------------------------------------------------------------------

#[test]
fn an_unknown_double_dash_flag_is_a_one_line_usage_error_naming_it() {
    let stderr = assert_usage_error(&["--nosuchflag", "cat"], &["--nosuchflag"]);
    assert!(!stderr.contains("unable to locate"), "{stderr}");
}

#[test]
fn an_unknown_single_dash_flag_is_a_one_line_usage_error_naming_it() {
    assert_usage_error(&["-nosuchflag", "cat"], &["-nosuchflag"]);
}

#[test]
fn an_unknown_flag_with_a_value_is_a_one_line_usage_error_naming_it() {
    assert_usage_error(&["--nosuchflag=1", "cat"], &["--nosuchflag"]);
}

#[test]
fn a_non_numeric_port_is_a_one_line_usage_error_naming_port() {
    assert_usage_error(&["--port=abc", "cat"], &["--port", "abc"]);
}

#[test]
fn an_unknown_loglevel_is_a_one_line_usage_error_naming_loglevel() {
    assert_usage_error(&["--loglevel=loud", "cat"], &["--loglevel", "loud"]);
}

#[test]
fn a_non_numeric_maxforks_is_a_one_line_usage_error_naming_maxforks() {
    assert_usage_error(&["--maxforks=x", "cat"], &["--maxforks"]);
}

#[test]
fn a_value_missing_at_the_end_is_a_one_line_usage_error_naming_the_flag() {
    for args in [&["--port"][..], &["--binary", "-port"], &["--origin"]] {
        let flag = format!("--{}", args.last().unwrap().trim_start_matches('-'));
        assert_usage_error(args, &[&flag]);
    }
}

#[test]
fn a_non_boolean_value_for_a_boolean_flag_is_a_usage_error_naming_it() {
    assert_usage_error(&["--binary=yes", "cat"], &["--binary", "yes"]);
}

#[test]
fn binary_with_passstderr_is_a_usage_error_naming_both() {
    for args in [
        ["--binary", "--passstderr", "cat"],
        ["--passstderr", "--binary", "cat"],
    ] {
        assert_usage_error(&args, &["--binary", "--passstderr"]);
    }
}

#[test]
fn no_command_exits_1_with_a_message() {
    let (code, stdout, stderr) = run_wsd(&["--port=8080"]);
    assert_eq!(code, 1, "stderr: {stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr
            .contains("Please specify COMMAND or provide --dir, --staticdir or --cgidir argument."),
        "{stderr}"
    );
}

#[test]
fn no_arguments_at_all_exits_1_with_a_message() {
    let (code, _, stderr) = run_wsd(&[]);
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stderr.contains("COMMAND"), "{stderr}");
}

#[test]
fn an_unknown_command_exits_1_unable_to_locate_it() {
    let (code, stdout, stderr) = run_wsd(&["--port=8080", "/nonexistent/prog"]);
    assert_eq!(code, 1, "stderr: {stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("unable to locate"), "{stderr}");
    assert!(stderr.contains("/nonexistent/prog"), "{stderr}");
}

#[test]
fn version_in_both_spellings_prints_one_line_and_exits_0() {
    for flag in ["--version", "-version"] {
        let (code, stdout, stderr) = run_wsd(&[flag]);
        assert_eq!(code, 0, "{flag}: stderr {stderr}");
        assert_eq!(stdout.lines().count(), 1, "{flag}: {stdout:?}");
        assert!(
            stdout.starts_with(&format!("wsd {}", env!("CARGO_PKG_VERSION"))),
            "{flag}: {stdout:?}"
        );
        assert_eq!(stderr, "", "{flag}");
    }
}

#[test]
fn license_in_both_spellings_prints_the_license_and_exits_0() {
    for flag in ["--license", "-license"] {
        let (code, stdout, stderr) = run_wsd(&[flag]);
        assert_eq!(code, 0, "{flag}: stderr {stderr}");
        assert!(stdout.contains("Copyright"), "{flag}: {stdout:?}");
        assert_eq!(stderr, "", "{flag}");
    }
}

/// Whether `text` mentions `--name` as a whole flag (not as the prefix of a longer one).
fn mentions_flag(text: &str, name: &str) -> bool {
    let needle = format!("--{name}");
    text.match_indices(&needle).any(|(i, _)| {
        let next = text[i + needle.len()..].chars().next();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-')
    })
}

#[test]
fn help_in_every_spelling_exits_0_and_mentions_every_flag() {
    const FLAGS: [&str; 30] = [
        "port",
        "address",
        "unixsocket",
        "binary",
        "passstderr",
        "maxframesize",
        "max-line-bytes",
        "dir",
        "passenv",
        "reverselookup",
        "maxforks",
        "closems",
        "pingms",
        "origin",
        "sameorigin",
        "header",
        "header-ws",
        "header-http",
        "loglevel",
        "staticdir",
        "cgidir",
        "devconsole",
        "ssl",
        "sslcert",
        "sslkey",
        "sslca",
        "redirport",
        "version",
        "license",
        "help",
    ];
    for flag in ["--help", "-help"] {
        let (code, stdout, stderr) = run_wsd(&[flag]);
        assert_eq!(code, 0, "{flag}: stderr {stderr}");
        for name in FLAGS {
            assert!(
                mentions_flag(&stdout, name),
                "{flag}: the help does not mention --{name}"
            );
        }
    }
    let (code, stdout, _) = run_wsd(&["-h"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Usage: wsd"), "{stdout}");
}

// ---- listeners ---------------------------------------------------------------------------

#[test]
fn a_port_already_taken_exits_3_with_address_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, stdout, stderr) =
        run_wsd(&[&format!("--port={port}"), "--address=127.0.0.1", "cat"]);
    assert_eq!(code, 3, "stdout {stdout} stderr {stderr}");
    assert!(stdout.contains("address already in use"), "{stdout}");
    assert!(stdout.contains(&format!("127.0.0.1:{port}")), "{stdout}");
}

#[tokio::test]
async fn unixsocket_alone_listens_only_on_the_socket() {
    let dir = TempDir::new("cli-unix-only");
    let sock = dir.path().join("wsd.sock");
    let wsd = spawn_exact(
        &strings(&[&format!("--unixsocket={}", sock.display()), "cat"]),
        0,
    );
    wait_for_unix(&wsd, &sock);
    let mut ws = unix_connect(&sock).await;
    assert_eq!(unix_echo(&mut ws, "over unix").await, "over unix");
    assert_eq!(
        tcp_listen_ports(wsd.pid()),
        Vec::<u16>::new(),
        "wsd listens on TCP too"
    );
    let line = wsd.wait_log(&format!("unix socket at {}", sock.display()), FIVE_SECONDS);
    assert!(line.is_some(), "{:?}", wsd.stdout());
    assert!(
        wsd.stdout().iter().all(|l| !l.contains("ws://")),
        "{:?}",
        wsd.stdout()
    );
}

#[tokio::test]
async fn a_stale_unix_socket_file_is_replaced() {
    let dir = TempDir::new("cli-unix-stale");
    let sock = dir.path().join("wsd.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists(), "the stale socket file should be left behind");
    let wsd = spawn_exact(
        &strings(&[&format!("--unixsocket={}", sock.display()), "cat"]),
        0,
    );
    wait_for_unix(&wsd, &sock);
    let mut ws = unix_connect(&sock).await;
    assert_eq!(unix_echo(&mut ws, "fresh").await, "fresh");
}

#[tokio::test]
async fn a_unix_socket_held_by_a_live_server_is_refused_and_the_first_server_keeps_serving() {
    let dir = TempDir::new("cli-unix-live");
    let sock = dir.path().join("wsd.sock");
    let flag = format!("--unixsocket={}", sock.display());
    let first = spawn_exact(&strings(&[&flag, "cat"]), 0);
    wait_for_unix(&first, &sock);

    let (code, stdout, stderr) = run_wsd(&[&flag, "cat"]);
    assert_eq!(code, 3, "stdout {stdout} stderr {stderr}");
    assert!(stdout.contains("already in use"), "{stdout}");

    let mut ws = unix_connect(&sock).await;
    assert_eq!(unix_echo(&mut ws, "still here").await, "still here");
    assert!(first.stdout().iter().all(|l| !l.contains("shutting down")));
}

#[tokio::test]
async fn unixsocket_with_port_serves_on_both() {
    let dir = TempDir::new("cli-unix-both");
    let sock = dir.path().join("wsd.sock");
    let wsd = Wsd::start(&[&format!("--unixsocket={}", sock.display()), "cat"]);
    wait_for_unix(&wsd, &sock);
    let mut ws = unix_connect(&sock).await;
    assert_eq!(unix_echo(&mut ws, "unix").await, "unix");
    assert_eq!(echo_event(&wsd, "tcp").await, Event::Text("tcp".into()));
    assert_eq!(tcp_listen_ports(wsd.pid()), vec![wsd.port]);
}

#[tokio::test]
async fn address_is_repeatable_and_serves_every_address() {
    // Linux routes all of 127.0.0.0/8 to the loopback interface.
    if std::net::TcpListener::bind("127.0.0.2:0").is_err() {
        println!("skipped: 127.0.0.2 cannot be bound on this machine");
        return;
    }
    let wsd = Wsd::start(&["--address=127.0.0.2", "cat"]);
    assert_eq!(echo_event(&wsd, "first").await, Event::Text("first".into()));
    let mut c = Client::connect(&format!("ws://127.0.0.2:{}/", wsd.port)).await;
    c.send_text("second").await;
    assert_eq!(
        c.next_event(FIVE_SECONDS).await,
        Event::Text("second".into())
    );
}

#[tokio::test]
async fn address_in_brackets_serves_ipv6_next_to_ipv4() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipped the IPv6 half: ::1 cannot be bound on this machine");
        return;
    }
    let wsd = Wsd::start(&["--address=[::1]", "cat"]);
    assert_eq!(echo_event(&wsd, "v4").await, Event::Text("v4".into()));
    let mut c6 = Client::connect(&format!("ws://[::1]:{}/", wsd.port)).await;
    c6.send_text("v6").await;
    assert_eq!(c6.next_event(FIVE_SECONDS).await, Event::Text("v6".into()));
}
