//! The HTTP side, through the real binary: plain requests, handshake validation, `--maxforks`,
//! origins, extra headers, `--dir` routing (and escapes from it), and the header-read timeout.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FIVE_SECONDS: Duration = Duration::from_secs(5);

// ---- helpers -----------------------------------------------------------------------------

/// The body of a raw response.
fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A plain GET (no upgrade) that closes the connection after the answer.
fn plain_get(path: &str, port: u16) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// An upgrade request with the given Host header and extra header lines (each ending in \r\n).
fn upgrade_with_host(path: &str, host: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// The status of an upgrade to `/` carrying `Origin: origin`.
fn status_with_origin(wsd: &Wsd, origin: &str) -> u16 {
    status_of(&raw_http(
        wsd.port,
        &upgrade_request("/", &format!("Origin: {origin}\r\n")),
    ))
}

/// A script that leaves a marker file when it starts, so a test can tell whether it ever ran.
fn marker_script(dir: &TempDir) -> (PathBuf, PathBuf) {
    let marker = dir.path().join("started");
    let script = dir.script(
        "mark.sh",
        &format!("touch '{}'\nexec cat", marker.display()),
    );
    (script, marker)
}

/// Asserts that wsd never started a child (no child process now, no marker file).
fn assert_no_child_started(wsd: &Wsd, marker: &Path) {
    assert_eq!(
        children_of(wsd.pid()),
        Vec::<u32>::new(),
        "wsd has children"
    );
    assert!(!marker.exists(), "the program was started");
}

/// Waits until `needle` has been logged, lets stragglers arrive, and returns how often it was.
fn settled_count(wsd: &Wsd, needle: &str, at_least: usize) -> usize {
    wait_until(FIVE_SECONDS, || wsd.count_log(needle) >= at_least);
    std::thread::sleep(Duration::from_millis(200));
    wsd.count_log(needle)
}

// ---- plain requests ----------------------------------------------------------------------

#[test]
fn a_plain_get_is_answered_426_with_upgrade_websocket_and_the_ws_url() {
    let wsd = Wsd::start(&["cat"]);
    let resp = raw_http(wsd.port, &plain_get("/some/path?x=1", wsd.port));
    assert_eq!(status_of(&resp), 426, "{resp}");
    assert_eq!(header_values(&resp, "Upgrade"), vec!["websocket"], "{resp}");
    let body = body_of(&resp);
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert!(body.ends_with('\n'), "{body:?}");
    let url = format!("ws://127.0.0.1:{}/some/path?x=1", wsd.port);
    assert!(
        body.contains(&url),
        "the body should mention {url}: {body:?}"
    );
}

#[test]
fn a_plain_get_is_logged_once_at_access_level_with_its_url() {
    let wsd = Wsd::start(&["cat"]);
    let resp = raw_http(wsd.port, &plain_get("/logged/path", wsd.port));
    assert_eq!(status_of(&resp), 426, "{resp}");
    let needle = format!("url:'http://127.0.0.1:{}/logged/path'", wsd.port);
    assert_eq!(settled_count(&wsd, &needle, 1), 1, "{:?}", wsd.stdout());
    let line = wsd.wait_log(&needle, FIVE_SECONDS).unwrap();
    assert!(line.contains("| ACCESS |"), "{line}");
}

// ---- handshake validation ----------------------------------------------------------------

#[test]
fn a_valid_upgrade_starts_the_program() {
    // The control for the tests below: the marker does appear when the handshake is good.
    let dir = TempDir::new("http-control");
    let (script, marker) = marker_script(&dir);
    let wsd = Wsd::start(&[script.to_str().unwrap()]);
    let mut s = TcpStream::connect(("127.0.0.1", wsd.port)).unwrap();
    s.write_all(&upgrade_request("/", "")).unwrap();
    s.set_read_timeout(Some(FIVE_SECONDS)).unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
    assert!(
        wait_until(FIVE_SECONDS, || marker.exists()),
        "the program did not start"
    );
    assert_eq!(children_of(wsd.pid()).len(), 1);
}

#[test]
fn sec_websocket_version_8_is_answered_426_with_version_13_and_starts_nothing() {
    let dir = TempDir::new("http-version");
    let (script, marker) = marker_script(&dir);
    let wsd = Wsd::start(&[script.to_str().unwrap()]);
    let req = String::from_utf8(upgrade_request("/", ""))
        .unwrap()
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let resp = raw_http(wsd.port, req.as_bytes());
    assert_eq!(status_of(&resp), 426, "{resp}");
    assert_eq!(
        header_values(&resp, "Sec-WebSocket-Version"),
        vec!["13"],
        "{resp}"
    );
    assert_no_child_started(&wsd, &marker);
}

#[test]
fn a_missing_sec_websocket_key_is_answered_400_and_starts_nothing() {
    let dir = TempDir::new("http-nokey");
    let (script, marker) = marker_script(&dir);
    let wsd = Wsd::start(&[script.to_str().unwrap()]);
    let req = String::from_utf8(upgrade_request("/", ""))
        .unwrap()
        .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    assert!(!req.contains("Sec-WebSocket-Key"));
    let resp = raw_http(wsd.port, req.as_bytes());
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert_no_child_started(&wsd, &marker);
}

#[test]
fn a_sec_websocket_key_that_is_not_16_bytes_is_answered_400_and_starts_nothing() {
    let dir = TempDir::new("http-shortkey");
    let (script, marker) = marker_script(&dir);
    let wsd = Wsd::start(&[script.to_str().unwrap()]);
    // "c2hvcnQ=" is valid base64 for the 5 bytes "short".
    let req = String::from_utf8(upgrade_request("/", ""))
        .unwrap()
        .replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
    let resp = raw_http(wsd.port, req.as_bytes());
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert_no_child_started(&wsd, &marker);
}

#[test]
fn a_post_with_upgrade_headers_is_answered_405_and_starts_nothing() {
    let dir = TempDir::new("http-post");
    let (script, marker) = marker_script(&dir);
    let wsd = Wsd::start(&[script.to_str().unwrap()]);
    let req = String::from_utf8(upgrade_request("/", "Content-Length: 0\r\n"))
        .unwrap()
        .replacen("GET ", "POST ", 1);
    let resp = raw_http(wsd.port, req.as_bytes());
    assert_eq!(status_of(&resp), 405, "{resp}");
    assert_no_child_started(&wsd, &marker);
}

// ---- --maxforks --------------------------------------------------------------------------

const FORKS_LOG: &str = "Max of possible forks already active, upgrade rejected";

#[tokio::test]
async fn a_third_session_beyond_maxforks_2_is_refused_with_429() {
    let wsd = Wsd::start(&["--maxforks=2", "cat"]);
    let _a = wsd.connect("/").await;
    let _b = wsd.connect("/").await;
    let resp = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(status_of(&resp), 429, "{resp}");
}

#[tokio::test]
async fn after_a_session_closes_a_new_one_fits_under_maxforks_again() {
    let wsd = Wsd::start(&["--maxforks=2", "cat"]);
    let a = wsd.connect("/").await;
    let _b = wsd.connect("/").await;
    assert_eq!(
        status_of(&raw_http(wsd.port, &upgrade_request("/", ""))),
        429
    );
    a.close().await;
    let deadline = Instant::now() + FIVE_SECONDS;
    let mut c = loop {
        match tokio_tungstenite::connect_async(wsd.url("/")).await {
            Ok((ws, _)) => break Client { ws },
            Err(e) => assert!(
                Instant::now() < deadline,
                "still refused 5 s after a session closed: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.send_text("room again").await;
    assert_eq!(
        c.next_event(FIVE_SECONDS).await,
        Event::Text("room again".into())
    );
}

#[tokio::test]
async fn each_maxforks_rejection_is_logged_once() {
    let wsd = Wsd::start(&["--maxforks=2", "cat"]);
    let _a = wsd.connect("/").await;
    let _b = wsd.connect("/").await;
    for _ in 0..3 {
        assert_eq!(
            status_of(&raw_http(wsd.port, &upgrade_request("/", ""))),
            429
        );
    }
    assert_eq!(settled_count(&wsd, FORKS_LOG, 3), 3, "{:?}", wsd.stdout());
}

// ---- origins -----------------------------------------------------------------------------

#[test]
fn without_restrictions_any_or_no_origin_is_accepted() {
    let wsd = Wsd::start(&["cat"]);
    assert_eq!(
        status_of(&raw_http(wsd.port, &upgrade_request("/", ""))),
        101
    );
    assert_eq!(status_with_origin(&wsd, "http://anything.example"), 101);
    assert_eq!(status_with_origin(&wsd, "null"), 101);
}

#[test]
fn an_origin_listed_without_port_is_accepted_on_any_port_and_scheme() {
    let wsd = Wsd::start(&["--origin=trusted.com", "cat"]);
    for origin in [
        "http://trusted.com",
        "http://trusted.com:4000",
        "https://trusted.com",
    ] {
        assert_eq!(status_with_origin(&wsd, origin), 101, "{origin}");
    }
}

#[test]
fn an_origin_not_listed_is_refused_with_403() {
    let wsd = Wsd::start(&["--origin=trusted.com", "cat"]);
    for origin in [
        "http://evil.com",
        "http://trusted.com.evil.com",
        "http://sub.trusted.com",
        "null",
    ] {
        assert_eq!(status_with_origin(&wsd, origin), 403, "{origin}");
    }
}

#[test]
fn an_origin_listed_with_a_port_is_accepted_only_on_that_port() {
    let wsd = Wsd::start(&["--origin=trusted.com:3000", "cat"]);
    assert_eq!(status_with_origin(&wsd, "http://trusted.com:3000"), 101);
    assert_eq!(status_with_origin(&wsd, "http://trusted.com:4000"), 403);
    assert_eq!(status_with_origin(&wsd, "http://trusted.com"), 403);
}

#[test]
fn an_origin_listed_with_a_scheme_is_accepted_only_with_that_scheme() {
    let wsd = Wsd::start(&["--origin=https://a.com", "cat"]);
    assert_eq!(status_with_origin(&wsd, "https://a.com"), 101);
    assert_eq!(status_with_origin(&wsd, "http://a.com"), 403);
}

#[test]
fn sameorigin_accepts_an_origin_matching_the_host() {
    let wsd = Wsd::start(&["--sameorigin", "cat"]);
    let host = format!("127.0.0.1:{}", wsd.port);
    let resp = raw_http(
        wsd.port,
        &upgrade_with_host("/", &host, &format!("Origin: http://{host}\r\n")),
    );
    assert_eq!(status_of(&resp), 101, "{resp}");
}

#[test]
fn sameorigin_refuses_an_origin_with_another_host_or_port() {
    let wsd = Wsd::start(&["--sameorigin", "cat"]);
    let host = format!("127.0.0.1:{}", wsd.port);
    for origin in [
        format!("http://evil.com:{}", wsd.port),
        "http://127.0.0.1:1".to_string(),
    ] {
        let resp = raw_http(
            wsd.port,
            &upgrade_with_host("/", &host, &format!("Origin: {origin}\r\n")),
        );
        assert_eq!(status_of(&resp), 403, "{origin}: {resp}");
    }
}

#[test]
fn sameorigin_refuses_the_null_origin() {
    let wsd = Wsd::start(&["--sameorigin", "cat"]);
    let host = format!("127.0.0.1:{}", wsd.port);
    let resp = raw_http(wsd.port, &upgrade_with_host("/", &host, "Origin: null\r\n"));
    assert_eq!(status_of(&resp), 403, "{resp}");
}

// ---- extra headers -----------------------------------------------------------------------

#[test]
fn header_is_sent_on_the_101() {
    let wsd = Wsd::start(&["--header=X-A: 1", "cat"]);
    let resp = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert_eq!(header_values(&resp, "X-A"), vec!["1"], "{resp}");
}

#[test]
fn header_is_sent_on_the_426() {
    let wsd = Wsd::start(&["--header=X-A: 1", "cat"]);
    let resp = raw_http(wsd.port, &plain_get("/", wsd.port));
    assert_eq!(status_of(&resp), 426, "{resp}");
    assert_eq!(header_values(&resp, "X-A"), vec!["1"], "{resp}");
}

#[test]
fn header_is_sent_on_a_404() {
    let dir = TempDir::new("http-header-404");
    let wsd = Wsd::start(&[
        "--header=X-A: 1",
        &format!("--dir={}", dir.path().display()),
    ]);
    for req in [
        plain_get("/missing.sh", wsd.port),
        upgrade_request("/missing.sh", ""),
    ] {
        let resp = raw_http(wsd.port, &req);
        assert_eq!(status_of(&resp), 404, "{resp}");
        assert_eq!(header_values(&resp, "X-A"), vec!["1"], "{resp}");
    }
}

#[test]
fn header_is_sent_on_a_403() {
    let wsd = Wsd::start(&["--header=X-A: 1", "--origin=trusted.com", "cat"]);
    let resp = raw_http(
        wsd.port,
        &upgrade_request("/", "Origin: http://evil.com\r\n"),
    );
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert_eq!(header_values(&resp, "X-A"), vec!["1"], "{resp}");
}

#[tokio::test]
async fn header_is_sent_on_a_429() {
    let wsd = Wsd::start(&["--header=X-A: 1", "--maxforks=1", "cat"]);
    let _held = wsd.connect("/").await;
    let resp = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(status_of(&resp), 429, "{resp}");
    assert_eq!(header_values(&resp, "X-A"), vec!["1"], "{resp}");
}

#[test]
fn header_is_repeatable() {
    let wsd = Wsd::start(&["--header=X-A: 1", "--header=X-B: two words", "cat"]);
    let resp = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(header_values(&resp, "X-A"), vec!["1"], "{resp}");
    assert_eq!(header_values(&resp, "X-B"), vec!["two words"], "{resp}");
}

#[test]
fn header_ws_is_sent_on_the_101_only() {
    let wsd = Wsd::start(&["--header-ws=X-Ws: 1", "--origin=trusted.com", "cat"]);
    let ok = raw_http(
        wsd.port,
        &upgrade_request("/", "Origin: http://trusted.com\r\n"),
    );
    assert_eq!(status_of(&ok), 101, "{ok}");
    assert_eq!(header_values(&ok, "X-Ws"), vec!["1"], "{ok}");
    let plain = raw_http(wsd.port, &plain_get("/", wsd.port));
    assert_eq!(status_of(&plain), 426, "{plain}");
    assert_eq!(
        header_values(&plain, "X-Ws"),
        Vec::<String>::new(),
        "{plain}"
    );
    let refused = raw_http(
        wsd.port,
        &upgrade_request("/", "Origin: http://evil.com\r\n"),
    );
    assert_eq!(status_of(&refused), 403, "{refused}");
    assert_eq!(
        header_values(&refused, "X-Ws"),
        Vec::<String>::new(),
        "{refused}"
    );
}

#[test]
fn header_http_is_sent_on_every_response_but_the_101() {
    let wsd = Wsd::start(&["--header-http=X-Http: 1", "--origin=trusted.com", "cat"]);
    let ok = raw_http(
        wsd.port,
        &upgrade_request("/", "Origin: http://trusted.com\r\n"),
    );
    assert_eq!(status_of(&ok), 101, "{ok}");
    assert_eq!(header_values(&ok, "X-Http"), Vec::<String>::new(), "{ok}");
    let plain = raw_http(wsd.port, &plain_get("/", wsd.port));
    assert_eq!(status_of(&plain), 426, "{plain}");
    assert_eq!(header_values(&plain, "X-Http"), vec!["1"], "{plain}");
    let refused = raw_http(
        wsd.port,
        &upgrade_request("/", "Origin: http://evil.com\r\n"),
    );
    assert_eq!(status_of(&refused), 403, "{refused}");
    assert_eq!(header_values(&refused, "X-Http"), vec!["1"], "{refused}");
}

fn assert_bad_header_flag(arg: &str, flag: &str) {
    assert_usage_error(&["--port=8080", arg, "cat"], &[flag]);
}

#[test]
fn a_header_name_with_a_space_is_a_usage_error_naming_header() {
    assert_bad_header_flag("--header=Bad Name: 1", "--header");
}

#[test]
fn an_empty_header_name_is_a_usage_error_naming_header_ws() {
    assert_bad_header_flag("--header-ws=: 1", "--header-ws");
}

#[test]
fn a_header_value_with_a_control_character_is_a_usage_error_naming_header_http() {
    assert_bad_header_flag("--header-http=X-A: a\u{1}b", "--header-http");
}

// ---- --dir -------------------------------------------------------------------------------

/// A `--dir` layout:
///   T/d/hello.sh, T/d/sub/tool.sh   print SCRIPT_NAME and PATH_INFO
///   T/d/noexec.sh                   not executable
///   T/d/alias.sh -> hello.sh        a symlink inside
///   T/d/escape.sh -> T/x            a symlink outside
///   T/x                             executable outside T/d: leaves T/pwned, prints PWNED
struct DirFixture {
    tmp: TempDir,
    wsd: Wsd,
}

impl DirFixture {
    fn new(tag: &str) -> DirFixture {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new(tag);
        let show = "echo \"SCRIPT_NAME=$SCRIPT_NAME\"\necho \"PATH_INFO=$PATH_INFO\"";
        tmp.script("d/hello.sh", show);
        tmp.script("d/sub/tool.sh", show);
        let noexec = tmp.script("d/noexec.sh", "echo should not run");
        std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
        let pwned = tmp.path().join("pwned");
        let outside = tmp.script("x", &format!("touch '{}'\necho PWNED", pwned.display()));
        std::os::unix::fs::symlink("hello.sh", tmp.path().join("d/alias.sh")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("d/escape.sh")).unwrap();
        let wsd = Wsd::start(&[&format!("--dir={}", tmp.path().join("d").display())]);
        DirFixture { tmp, wsd }
    }

    fn pwned(&self) -> bool {
        self.tmp.path().join("pwned").exists()
    }

    fn upgrade_status(&self, path: &str) -> u16 {
        status_of(&raw_http(self.wsd.port, &upgrade_request(path, "")))
    }

    async fn messages(&self, path: &str) -> Vec<String> {
        let mut c = self.wsd.connect(path).await;
        let (texts, close) = c.read_to_close(FIVE_SECONDS).await;
        assert_eq!(close.map(|c| c.0), Some(1000), "{path}");
        texts
    }
}

#[tokio::test]
async fn dir_runs_the_named_script_with_its_script_name_and_empty_path_info() {
    let f = DirFixture::new("http-dir-hello");
    assert_eq!(
        f.messages("/hello.sh").await,
        vec!["SCRIPT_NAME=/hello.sh", "PATH_INFO="]
    );
}

#[tokio::test]
async fn dir_splits_a_longer_path_into_script_name_and_path_info() {
    let f = DirFixture::new("http-dir-pathinfo");
    assert_eq!(
        f.messages("/sub/tool.sh/extra/path").await,
        vec!["SCRIPT_NAME=/sub/tool.sh", "PATH_INFO=/extra/path"]
    );
}

#[test]
fn dir_answers_404_for_a_missing_script() {
    let f = DirFixture::new("http-dir-missing");
    assert_eq!(f.upgrade_status("/missing.sh"), 404);
}

#[test]
fn dir_answers_404_for_a_directory() {
    let f = DirFixture::new("http-dir-directory");
    assert_eq!(f.upgrade_status("/sub"), 404);
    assert_eq!(f.upgrade_status("/sub/"), 404);
}

#[test]
fn dir_answers_403_for_a_file_that_is_not_executable() {
    let f = DirFixture::new("http-dir-noexec");
    assert_eq!(f.upgrade_status("/noexec.sh"), 403);
}

#[test]
fn dir_answers_404_to_paths_that_climb_out_and_never_runs_what_is_outside() {
    let f = DirFixture::new("http-dir-climb");
    for path in [
        "/../x",
        "/%2e%2e/x",
        "/%2E%2E/x",
        "/sub%2f..%2f..%2fx",
        "/sub/../../x",
    ] {
        assert_eq!(f.upgrade_status(path), 404, "{path}");
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(!f.pwned(), "a script outside --dir ran");
}

#[test]
fn dir_answers_404_to_a_symlink_leading_outside_and_never_runs_its_target() {
    let f = DirFixture::new("http-dir-symlink-out");
    assert_eq!(f.upgrade_status("/escape.sh"), 404);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!f.pwned(), "the symlink's target outside --dir ran");
}

#[tokio::test]
async fn dir_follows_a_symlink_to_another_script_inside() {
    let f = DirFixture::new("http-dir-symlink-in");
    assert_eq!(
        f.messages("/alias.sh").await,
        vec!["SCRIPT_NAME=/alias.sh", "PATH_INFO="]
    );
}

#[test]
fn dir_answers_a_plain_get_426_for_a_script_and_404_for_a_missing_one() {
    let f = DirFixture::new("http-dir-plain");
    assert_eq!(
        status_of(&raw_http(f.wsd.port, &plain_get("/hello.sh", f.wsd.port))),
        426
    );
    assert_eq!(
        status_of(&raw_http(f.wsd.port, &plain_get("/missing.sh", f.wsd.port))),
        404
    );
}

// ---- slow clients ------------------------------------------------------------------------

#[tokio::test]
async fn a_client_stalling_in_its_request_line_is_dropped_after_10_s_while_others_are_served() {
    let wsd = Wsd::start(&["cat"]);
    let port = wsd.port;
    let staller = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HT").unwrap();
        let start = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        (
            closed,
            start.elapsed(),
            String::from_utf8_lossy(&got).into_owned(),
        )
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut c = wsd.connect("/").await;
    c.send_text("not starved").await;
    assert_eq!(
        c.next_event(FIVE_SECONDS).await,
        Event::Text("not starved".into())
    );
    c.close().await;

    let (closed, after, got) = tokio::task::spawn_blocking(move || staller.join().unwrap())
        .await
        .unwrap();
    assert!(closed, "the stalled connection was still open after 15 s");
    assert!(
        after >= Duration::from_secs(9),
        "closed too early, after {after:?}"
    );
    assert!(
        after <= Duration::from_millis(12_500),
        "closed only after {after:?}"
    );
    // As Go's server: the connection is closed without an answer.
    assert_eq!(got, "", "unexpected answer");
}
