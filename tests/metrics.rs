//! `--metrics`: Prometheus text scraped from the real binary during and after sessions, for
//! connections, programs, messages, rejections and durations.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const SECS5: Duration = Duration::from_secs(5);

/// Starts wsd with a metrics listener on a free port; returns it and the metrics port.
fn start_with_metrics(args: &[&str]) -> (GracefulWsd, u16) {
    let port = free_port();
    let flag = format!("--metrics=127.0.0.1:{port}");
    let mut all = vec![flag.as_str()];
    all.extend_from_slice(args);
    let wsd = GracefulWsd(Wsd::start(&all));
    wsd.assert_listening(port);
    (wsd, port)
}

/// A plain HTTP GET: (status, content type, body).
fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(SECS5)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status_of(head), content_type, body.to_string())
}

/// One scrape: every sample as `name{labels}` → value.
struct Scrape(String);

impl Scrape {
    fn take(port: u16) -> Scrape {
        let (status, content_type, body) = get(port, "/metrics");
        assert_eq!(status, 200, "{body}");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        Scrape(body)
    }

    /// The value of the sample written exactly as `series`; 0 when absent (a counter of a
    /// label set that has not happened yet).
    fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    fn has(&self, series: &str) -> bool {
        self.0
            .lines()
            .any(|l| l.rsplit_once(' ').is_some_and(|(n, _)| n == series))
    }
}

/// Waits until a scrape satisfies `cond`; that scrape.
fn scrape_until(port: u16, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    let ok = wait_until(SECS5, || {
        let s = Scrape::take(port);
        let done = cond(&s);
        last = Some(s);
        done
    });
    let last = last.expect("at least one scrape");
    assert!(ok, "the metrics never got there:\n{}", last.0);
    last
}

const GREETER: &str = r#"while read name; do echo "Hello, $name!"; done"#;

#[tokio::test]
async fn a_scrape_during_a_session_shows_it_and_a_later_one_its_end() {
    let (wsd, metrics) = start_with_metrics(&["/bin/sh", "-c", GREETER]);
    let mut c = wsd.connect("/").await;
    c.send_text("Ada").await;
    assert_eq!(c.recv_text().await, "Hello, Ada!");
    c.send_text("Bob").await;
    assert_eq!(c.recv_text().await, "Hello, Bob!");

    // A message counts as sent once its write is flushed, which can be just after the client
    // has read it; so wait for the count, then check that scrape exactly.
    let during = scrape_until(metrics, |s| s.value("wsd_messages_sent_total") >= 2.0);
    assert_eq!(during.value(r#"wsd_connections_open{route="/"}"#), 1.0);
    assert_eq!(during.value(r#"wsd_connections_total{route="/"}"#), 1.0);
    assert_eq!(during.value("wsd_children_running"), 1.0);
    assert_eq!(during.value("wsd_children_spawned_total"), 1.0);
    assert_eq!(during.value("wsd_messages_received_total"), 2.0);
    assert_eq!(during.value("wsd_received_bytes_total"), 6.0, "Ada, Bob");
    assert_eq!(during.value("wsd_messages_sent_total"), 2.0);
    assert_eq!(during.value("wsd_sent_bytes_total"), 22.0);
    assert_eq!(during.value("wsd_handshake_duration_seconds_count"), 1.0);
    assert_eq!(
        during.value(r#"wsd_handshake_duration_seconds_bucket{le="+Inf"}"#),
        1.0
    );
    assert_eq!(during.value("wsd_session_duration_seconds_count"), 0.0);
    assert!(during.value("wsd_http_connections_total") >= 1.0);

    // The client's close code is the connection's.
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let _ =
        c.ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await;
    let after = scrape_until(metrics, |s| {
        s.value(r#"wsd_connections_open{route="/"}"#) == 0.0
            && s.value("wsd_children_running") == 0.0
    });
    assert_eq!(
        after.value(r#"wsd_connections_closed_total{route="/",code="1000"}"#),
        1.0
    );
    assert_eq!(after.value("wsd_session_duration_seconds_count"), 1.0);
    assert_eq!(after.value("wsd_spawn_failures_total"), 0.0);
}

#[tokio::test]
async fn close_codes_are_counted_by_route() {
    let dir = TempDir::new("metrics-codes");
    dir.script("ok", "echo done");
    dir.script("fail", "exit 3");
    let (wsd, metrics) = start_with_metrics(&[&format!("--dir={}", s(dir.path()))]);
    for path in ["/ok", "/fail", "/fail"] {
        let mut c = wsd.connect(path).await;
        c.read_to_close(SECS5).await;
    }
    let scrape = scrape_until(metrics, |s| {
        s.value(r#"wsd_connections_closed_total{route="/fail",code="1011"}"#) == 2.0
    });
    assert_eq!(
        scrape.value(r#"wsd_connections_closed_total{route="/ok",code="1000"}"#),
        1.0
    );
    assert_eq!(scrape.value(r#"wsd_connections_total{route="/fail"}"#), 2.0);
}

#[tokio::test]
async fn rejected_connections_are_counted_by_reason() {
    let dir = TempDir::new("metrics-rejects");
    dir.script("hold", "exec sleep 30");
    std::fs::write(dir.path().join("noexec"), "#!/bin/sh\n").unwrap();
    let (wsd, metrics) = start_with_metrics(&[
        &format!("--dir={}", s(dir.path())),
        "--maxforks=1",
        "--origin=trusted.example",
        "--max-header-bytes=8192",
    ]);
    let port = wsd.port;
    let origin = "Origin: http://trusted.example\r\n";
    let status =
        |path: &str, extra: &str| status_of(&raw_http(port, &upgrade_request(path, extra)));
    assert_eq!(status("/missing", origin), 404);
    assert_eq!(status("/noexec", origin), 403);
    assert_eq!(status("/hold", "Origin: http://evil.example\r\n"), 403);
    let bad_version = upgrade_request("/hold", origin)
        .split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).replace("Version: 13", "Version: 8"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(status_of(&raw_http(port, bad_version.as_bytes())), 426);
    let big = format!("{origin}X-Filler: {}\r\n", "a".repeat(9000));
    assert_eq!(status("/hold", &big), 431);
    let held = raw_ws_upgrade_with(port, "/hold", origin);
    assert_eq!(status("/hold", origin), 429);
    drop(held);

    let scrape = Scrape::take(metrics);
    for (reason, n) in [
        ("404", 1.0),
        ("403", 2.0),
        ("426", 1.0),
        ("431", 1.0),
        ("429", 1.0),
    ] {
        assert_eq!(
            scrape.value(&format!(
                r#"wsd_connections_rejected_total{{reason="{reason}"}}"#
            )),
            n,
            "{reason}:\n{}",
            scrape.0
        );
    }
    assert_eq!(scrape.value(r#"wsd_connections_total{route="/hold"}"#), 1.0);
}

/// An upgrade on a raw socket with extra headers, kept open.
fn raw_ws_upgrade_with(port: u16, path: &str, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(SECS5)).unwrap();
    s.write_all(&upgrade_request(path, extra)).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    s
}

#[tokio::test]
async fn a_program_that_cannot_start_is_a_spawn_failure() {
    let dir = TempDir::new("metrics-spawn");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "#!/nonexistent/interpreter\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (wsd, metrics) = start_with_metrics(&[&format!("--dir={}", s(dir.path()))]);
    assert_eq!(
        status_of(&raw_http(wsd.port, &upgrade_request("/bad", ""))),
        500
    );
    let scrape = Scrape::take(metrics);
    assert_eq!(scrape.value("wsd_spawn_failures_total"), 1.0);
    assert_eq!(scrape.value("wsd_children_spawned_total"), 0.0);
    assert_eq!(
        scrape.value(r#"wsd_connections_rejected_total{reason="500"}"#),
        1.0
    );
}

#[test]
fn metrics_live_on_their_own_listener_only() {
    let (wsd, metrics) = start_with_metrics(&["/bin/cat"]);
    let (status, _, body) = get(metrics, "/");
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = get(wsd.port, "/metrics");
    assert_eq!(
        status, 426,
        "the WebSocket port does not serve metrics: {body}"
    );
    let scrape = Scrape::take(metrics);
    assert!(scrape.0.contains("# TYPE wsd_children_running gauge"));
    assert!(scrape.has("wsd_children_running"));

    // Off by default: the start-up log names no metrics listener.
    let plain = Wsd::start(&["--loglevel=info", "/bin/cat"]);
    assert!(plain.wait_log("Starting WebSocket server", SECS5).is_some());
    assert!(!plain.stdout().iter().any(|l| l.contains("metrics")));
}

#[test]
fn a_bad_or_busy_metrics_address_fails_the_start() {
    for bad in ["9100", "localhost", "127.0.0.1:x", "::1:9100"] {
        assert_usage_error(&[&format!("--metrics={bad}"), "cat"], &["--metrics"]);
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let (code, out, _) = run_wsd(&[
        &format!("--port={}", free_port()),
        "--address=127.0.0.1",
        &format!("--metrics=127.0.0.1:{busy}"),
        "cat",
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("address already in use") || out.contains("Address already in use"),
        "{out}"
    );
}
