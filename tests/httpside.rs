//! The HTTP side: `--staticdir` (files), `--cgidir` (CGI/1.1 scripts), `--devconsole` (the
//! test page), their precedence over each other and beside WebSocket upgrades, and that
//! nothing outside their directories can be reached.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use std::time::{Duration, Instant};

const SECS5: Duration = Duration::from_secs(5);

/// A raw request with Connection: close; the whole response.
fn get(port: u16, target: &str, extra: &str) -> String {
    raw_http(
        port,
        format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}\r\n"
        )
        .as_bytes(),
    )
}

/// The body, with chunked transfer encoding undone.
fn body(response: &str) -> String {
    let raw = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if header(response, "transfer-encoding") != Some("chunked") {
        return raw.to_string();
    }
    let mut out = String::new();
    let mut rest = raw;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A static tree: index.html, style.css, sub/index.html, a symlink inside and one leading out.
fn static_tree() -> TempDir {
    let dir = TempDir::new("static");
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("index.html"), "<html>home</html>").unwrap();
    std::fs::write(root.join("style.css"), "body { color: red; }").unwrap();
    std::fs::write(root.join("data.txt"), "0123456789").unwrap();
    std::fs::write(root.join("sub/index.html"), "<html>sub</html>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "SECRET-CONTENTS").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("leak")).unwrap();
    std::os::unix::fs::symlink(root.join("data.txt"), root.join("alias.txt")).unwrap();
    dir
}

// ---- --staticdir -------------------------------------------------------------------------------

#[tokio::test]
async fn staticdir_serves_files_with_their_type_and_index_html_for_directories() {
    let dir = static_tree();
    let root = dir.path().join("www");
    let wsd = Wsd::start(&[&format!("--staticdir={}", root.display()), "cat"]);
    let r = get(wsd.port, "/style.css", "");
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(header(&r, "content-type"), Some("text/css"));
    assert_eq!(body(&r), "body { color: red; }");
    let r = get(wsd.port, "/", "");
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(body(&r), "<html>home</html>");
    assert_eq!(header(&r, "content-type"), Some("text/html"));
    assert_eq!(body(&get(wsd.port, "/sub/", "")), "<html>sub</html>");
    assert_eq!(body(&get(wsd.port, "/alias.txt", "")), "0123456789");
    let r = get(wsd.port, "/missing.html", "");
    assert_eq!(status_of(&r), 404);
    assert!(wsd.wait_log("/missing.html' | STATIC 404", SECS5).is_some());
    // And WebSockets on the same port, even on a path that is a file.
    let mut c = wsd.connect("/style.css").await;
    c.send_text("ws too").await;
    assert_eq!(c.recv_text().await, "ws too");
    c.close().await;
}

#[tokio::test]
async fn staticdir_answers_head_conditional_and_range_requests() {
    let dir = static_tree();
    let root = dir.path().join("www");
    let wsd = Wsd::start(&[&format!("--staticdir={}", root.display()), "cat"]);
    let r = raw_http(
        wsd.port,
        b"HEAD /data.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 200);
    assert_eq!(header(&r, "content-length"), Some("10"));
    assert_eq!(body(&r), "");
    let full = get(wsd.port, "/data.txt", "");
    let modified = header(&full, "last-modified")
        .expect("Last-Modified")
        .to_string();
    let etag = header(&full, "etag").expect("ETag").to_string();
    let r = get(
        wsd.port,
        "/data.txt",
        &format!("If-Modified-Since: {modified}\r\n"),
    );
    assert_eq!(status_of(&r), 304, "{r}");
    let r = get(wsd.port, "/data.txt", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status_of(&r), 304, "{r}");
    let r = get(wsd.port, "/data.txt", "Range: bytes=2-5\r\n");
    assert_eq!(status_of(&r), 206, "{r}");
    assert_eq!(body(&r), "2345");
    assert_eq!(header(&r, "content-range"), Some("bytes 2-5/10"));
}

#[tokio::test]
async fn nothing_outside_staticdir_is_reachable() {
    let dir = static_tree();
    let root = dir.path().join("www");
    let wsd = Wsd::start(&[&format!("--staticdir={}", root.display()), "cat"]);
    for target in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/.%2e/secret.txt",
        "/..%2Fsecret.txt",
        "/sub/../../secret.txt",
        "/leak",
        "/../../../../etc/passwd",
    ] {
        let r = get(wsd.port, target, "");
        assert_ne!(status_of(&r), 200, "{target}: {r}");
        assert!(
            !r.contains("SECRET-CONTENTS") && !r.contains("root:"),
            "{target}: {r}"
        );
    }
}

#[tokio::test]
async fn staticdir_without_a_command_serves_files_and_refuses_upgrades_with_404() {
    let dir = static_tree();
    let root = dir.path().join("www");
    let wsd = Wsd::start(&[&format!("--staticdir={}", root.display())]);
    assert_eq!(body(&get(wsd.port, "/", "")), "<html>home</html>");
    assert_eq!(
        status_of(&raw_http(wsd.port, &upgrade_request("/", ""))),
        404
    );
}

#[test]
fn header_and_header_http_apply_to_static_files() {
    let dir = static_tree();
    let root = dir.path().join("www");
    let wsd = Wsd::start(&[
        &format!("--staticdir={}", root.display()),
        "--header=X-All: 1",
        "--header-http=X-Http: 2",
        "--header-ws=X-Ws: 3",
        "cat",
    ]);
    let r = get(wsd.port, "/data.txt", "");
    assert_eq!(header(&r, "x-all"), Some("1"));
    assert_eq!(header(&r, "x-http"), Some("2"));
    assert_eq!(header(&r, "x-ws"), None);
}

// ---- --cgidir ----------------------------------------------------------------------------------

/// A CGI tree: scripts inside `cgi/`, and `outside/evil.sh` which records that it ran.
fn cgi_tree() -> TempDir {
    let dir = TempDir::new("cgi");
    let marker = dir.path().join("evil-ran");
    dir.script(
        "cgi/hello.sh",
        "printf 'Content-Type: text/plain\\r\\nX-Script: hello\\r\\n\\r\\n'\necho \"hello $REQUEST_METHOD q=$QUERY_STRING len=$CONTENT_LENGTH type=$CONTENT_TYPE\"\necho \"sw=$SERVER_SOFTWARE remote=$REMOTE_ADDR script=$SCRIPT_NAME ua=$HTTP_USER_AGENT\"",
    );
    dir.script(
        "cgi/sub/nested.sh",
        "printf 'Content-Type: text/plain\\n\\n'\necho nested",
    );
    dir.script(
        "cgi/count.sh",
        "printf 'Content-Type: text/plain\\n\\n'\nwc -c",
    );
    dir.script(
        "cgi/status.sh",
        "printf 'Status: 418 I am a teapot\\nContent-Type: text/plain\\n\\nshort and stout\\n'",
    );
    dir.script("cgi/redirect.sh", "printf 'Location: /hello.sh\\n\\n'");
    dir.script("cgi/garbage.sh", "echo 'this is not a header block'");
    dir.script("cgi/hang.sh", "echo $$ > \"$0.pid\"\nexec sleep 1000");
    dir.script(
        "cgi/slow.sh",
        "printf 'Content-Type: text/plain\\n\\n'\necho first\nsleep 2\necho second",
    );
    dir.script(
        "cgi/forever.sh",
        "echo $$ > \"$0.pid\"\nprintf 'Content-Type: text/plain\\n\\n'\nwhile true; do echo tick; sleep 0.1; done",
    );
    dir.script(
        "outside/evil.sh",
        &format!("touch {}\necho PWNED", marker.display()),
    );
    std::os::unix::fs::symlink(
        dir.path().join("outside/evil.sh"),
        dir.path().join("cgi/escape.sh"),
    )
    .unwrap();
    std::fs::write(dir.path().join("cgi/plain.txt"), "not a script").unwrap();
    dir
}

fn start_cgi(dir: &TempDir, extra: &[&str]) -> Wsd {
    let mut args = vec![format!("--cgidir={}", dir.path().join("cgi").display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("cat".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Wsd::start(&args)
}

#[tokio::test]
async fn a_cgi_script_gets_the_request_and_its_headers_become_the_response() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &[]);
    let r = get(wsd.port, "/hello.sh?x=1&y=2", "User-Agent: tester\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(header(&r, "content-type"), Some("text/plain"));
    assert_eq!(header(&r, "x-script"), Some("hello"));
    let b = body(&r);
    assert!(b.contains("hello GET q=x=1&y=2 len= type="), "{b}");
    assert!(
        b.contains("sw=wsd/0.1.0 remote=127.0.0.1 script=/hello.sh ua=tester"),
        "{b}"
    );
    assert!(body(&get(wsd.port, "/sub/nested.sh", "")).contains("nested"));
    assert!(body(&get(wsd.port, "/sub/../hello.sh", "")).contains("hello GET"));
    assert_eq!(status_of(&get(wsd.port, "/nosuch.sh", "")), 404);
    // A WebSocket still goes to the program.
    let mut c = wsd.connect("/hello.sh").await;
    c.send_text("ws").await;
    assert_eq!(c.recv_text().await, "ws");
    c.close().await;
}

#[test]
fn a_cgi_request_body_streams_to_the_script() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &[]);
    let payload = vec![b'z'; 3 * 1024 * 1024];
    let mut req = format!(
        "POST /count.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    req.extend_from_slice(&payload);
    let r = raw_http(wsd.port, &req);
    assert_eq!(status_of(&r), 200, "{}", &r[..r.len().min(300)]);
    assert_eq!(body(&r).split_whitespace().last(), Some("3145728"), "{r}");
}

#[test]
fn status_and_location_headers_set_the_status() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &[]);
    let r = get(wsd.port, "/status.sh", "");
    assert_eq!(status_of(&r), 418, "{r}");
    assert_eq!(body(&r), "short and stout\n");
    let r = get(wsd.port, "/redirect.sh", "");
    assert_eq!(status_of(&r), 302, "{r}");
    assert_eq!(header(&r, "location"), Some("/hello.sh"));
}

#[test]
fn a_script_with_a_malformed_header_block_gets_502_and_a_log_line() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &[]);
    let r = get(wsd.port, "/garbage.sh", "");
    assert_eq!(status_of(&r), 502, "{r}");
    let line = wsd
        .wait_log("CGI: malformed response from the script", SECS5)
        .expect("logged");
    assert!(line.contains("no blank line after the headers"), "{line}");
    assert!(line.contains("garbage.sh"), "{line}");
}

#[test]
fn a_script_that_hangs_is_killed_after_the_cgi_timeout_with_504() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &["--cgi-timeout-ms=500"]);
    let start = Instant::now();
    let r = get(wsd.port, "/hang.sh", "");
    assert_eq!(status_of(&r), 504, "{r}");
    assert!(start.elapsed() < Duration::from_secs(3));
    let pid: u32 = std::fs::read_to_string(dir.path().join("cgi/hang.sh.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_gone(pid, SECS5), "the hung script {pid} still runs");
    assert!(wsd
        .wait_log("no headers within --cgi-timeout-ms", SECS5)
        .is_some());
}

#[test]
fn cgi_output_streams_instead_of_being_buffered_whole() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", wsd.port)).unwrap();
    s.write_all(b"GET /slow.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(SECS5)).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first line");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the first line came only after {:?}",
        start.elapsed()
    );
    let _ = s.read_to_end(&mut got);
    assert!(String::from_utf8_lossy(&got).contains("second"));
}

#[test]
fn when_the_client_leaves_a_streaming_script_is_stopped() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", wsd.port)).unwrap();
    s.write_all(b"GET /forever.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(SECS5)).unwrap();
    assert!(s.read(&mut buf).unwrap() > 0);
    let pidfile = dir.path().join("cgi/forever.sh.pid");
    assert!(wait_until(SECS5, || pidfile.exists()));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(s);
    assert!(
        wait_gone(pid, SECS5),
        "the script {pid} outlived its client"
    );
}

#[test]
fn nothing_outside_cgidir_runs() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &[]);
    for target in [
        "/../outside/evil.sh",
        "/%2e%2e/outside/evil.sh",
        "/.%2e/outside/evil.sh",
        "/hello.sh/../../outside/evil.sh",
        "/sub/../../outside/evil.sh",
        "/..%2Foutside%2Fevil.sh",
        "/escape.sh",
    ] {
        let r = get(wsd.port, target, "");
        assert_ne!(status_of(&r), 200, "{target}: {r}");
        assert!(!r.contains("PWNED"), "{target}: {r}");
    }
    assert!(
        !dir.path().join("evil-ran").exists(),
        "a script outside ran"
    );
    assert_eq!(status_of(&get(wsd.port, "/plain.txt", "")), 403);
}

#[tokio::test]
async fn cgi_scripts_count_against_maxforks() {
    let dir = cgi_tree();
    let wsd = start_cgi(&dir, &["--maxforks=1"]);
    let _c = wsd.connect("/").await;
    assert_eq!(status_of(&get(wsd.port, "/hello.sh", "")), 429);
}

// ---- --devconsole ------------------------------------------------------------------------------

#[tokio::test]
async fn devconsole_serves_the_page_on_any_path_and_websockets_still_work() {
    let wsd = Wsd::start(&["--devconsole", "cat"]);
    for path in ["/", "/some/path?x=1"] {
        let r = get(wsd.port, path, "");
        assert_eq!(status_of(&r), 200, "{r}");
        assert_eq!(header(&r, "content-type"), Some("text/html; charset=utf-8"));
        let expected = format!("value=\"ws://127.0.0.1:{}{}\"", wsd.port, path);
        assert!(body(&r).contains(&expected), "{expected} not in page");
    }
    let mut c = wsd.connect("/").await;
    c.send_text("hello").await;
    assert_eq!(c.recv_text().await, "hello");
    c.close().await;
}

#[test]
fn devconsole_escapes_markup_from_the_request() {
    let wsd = Wsd::start(&["--devconsole", "cat"]);
    let r = get(wsd.port, "/\"><script>alert(1)</script>", "");
    assert_eq!(status_of(&r), 200, "{r}");
    let page = body(&r);
    assert!(!page.contains("\"><script>alert(1)"), "reflected unescaped");
    assert!(page.contains("&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
    // In the Host header too.
    let r = raw_http(
        wsd.port,
        b"GET / HTTP/1.1\r\nHost: x\"><img src=x onerror=alert(1)>\r\nConnection: close\r\n\r\n",
    );
    assert!(!body(&r).contains("<img src=x"), "{r}");
}

#[test]
fn devconsole_cannot_be_combined_with_staticdir_or_cgidir() {
    let dir = TempDir::new("dc-combo");
    for flag in ["--staticdir", "--cgidir"] {
        assert_usage_error(
            &[
                "--devconsole",
                &format!("{flag}={}", dir.path().display()),
                "cat",
            ],
            &["--devconsole", flag],
        );
    }
}

#[test]
fn a_request_target_with_characters_hyper_refuses_still_gets_an_answer() {
    let wsd = Wsd::start(&["cat"]);
    let r = get(wsd.port, "/a|b{c}", "");
    assert_eq!(status_of(&r), 426, "{r}");
}

// ---- the chat example --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_example_serves_its_page_and_relays_each_line_to_everyone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chat");
    let wsd = Wsd::start(&[
        "--broadcast",
        "--replay=20",
        &format!("--staticdir={}", root.display()),
        s(&root.join("chat.sh")),
    ]);
    let page = get(wsd.port, "/", "");
    assert_eq!(status_of(&page), 200);
    assert!(body(&page).contains("<title>wsd chat</title>"));
    let mut ada = wsd.connect("/").await;
    let mut bob = wsd.connect("/").await;
    ada.send_text("ada: hello").await;
    for c in [&mut ada, &mut bob] {
        let line = c.recv_text().await;
        assert!(line.ends_with(" ada: hello"), "{line}");
    }
    // A late joiner sees the history.
    let mut cy = wsd.connect("/").await;
    assert!(cy.recv_text().await.ends_with(" ada: hello"));
    for c in [ada, bob, cy] {
        c.close().await;
    }
}
