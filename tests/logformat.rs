//! `--log-format`: websocketd's text lines by default, or one JSON object per line with named
//! fields and RFC 3339 timestamps.
mod common;
use common::*;

use std::time::Duration;

use serde_json::Value;

const SECS5: Duration = Duration::from_secs(5);

/// Every stdout line parsed as JSON; panics on a line that is not one object.
fn json_lines(wsd: &Wsd) -> Vec<(String, serde_json::Map<String, Value>)> {
    wsd.stdout()
        .into_iter()
        .map(|line| {
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            match v {
                Value::Object(map) => (line, map),
                other => panic!("not an object: {other:?}"),
            }
        })
        .collect()
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    obj.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key:?} in {obj:?}"))
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_connections_fields() {
    let wsd = Wsd::start(&["--log-format=json", "/bin/cat"]);
    let mut c = wsd.connect("/some/path?q=1").await;
    c.send_text("hello").await;
    assert_eq!(c.recv_text().await, "hello");
    c.close().await;
    assert!(
        wsd.wait_log("DISCONNECT", SECS5).is_some(),
        "{:?}",
        wsd.stdout()
    );

    let lines = json_lines(&wsd);
    let (startup_line, startup) = lines
        .iter()
        .find(|(_, o)| field(o, "message").starts_with("Starting WebSocket server"))
        .expect("a start-up line");
    assert_eq!(field(startup, "level"), "info");
    assert_eq!(field(startup, "area"), "server");
    assert!(!startup.contains_key("id"), "{startup_line}");

    for event in ["CONNECT", "DISCONNECT"] {
        let (line, obj) = lines
            .iter()
            .find(|(_, o)| field(o, "message").split(' ').next() == Some(event))
            .unwrap_or_else(|| panic!("no {event} line in {lines:?}"));
        assert_eq!(field(obj, "level"), "access");
        assert_eq!(field(obj, "area"), "session");
        assert_eq!(
            field(obj, "url"),
            format!("http://127.0.0.1:{}/some/path?q=1", wsd.port)
        );
        assert_eq!(field(obj, "remote"), "127.0.0.1");
        assert_eq!(field(obj, "command"), "/bin/cat");
        assert_eq!(field(obj, "origin"), "file:");
        assert!(field(obj, "id").parse::<u64>().is_ok(), "{line}");
        assert!(field(obj, "pid").parse::<u32>().is_ok(), "{line}");
        let time = field(obj, "time");
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "time {time:?} is not RFC 3339"
        );
        // The text format's order: time, level, area, the connection's fields, message.
        let at = |key: &str| line.find(&format!("\"{key}\":")).unwrap();
        assert!(
            at("time") < at("level") && at("level") < at("area"),
            "{line}"
        );
        assert!(
            at("area") < at("url") && at("pid") < at("message"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn json_escapes_what_a_program_writes_on_stderr() {
    let nasty = r#"a "quoted" \ back	tab"#;
    let wsd = Wsd::start(&[
        "--log-format=json",
        "/bin/sh",
        "-c",
        &format!("printf '%s\\n' '{nasty}' >&2; printf 'ctl\\001\\n' >&2; echo done"),
    ]);
    let mut c = wsd.connect("/").await;
    c.read_to_close(SECS5).await;
    assert!(wsd.wait_log("DISCONNECT", SECS5).is_some());
    let lines = json_lines(&wsd);
    let stderr: Vec<&str> = lines
        .iter()
        .filter(|(_, o)| field(o, "area") == "stderr")
        .map(|(_, o)| field(o, "message"))
        .collect();
    assert_eq!(stderr, vec![nasty, "ctl\u{1}"], "{lines:?}");
    assert!(lines
        .iter()
        .filter(|(_, o)| field(o, "area") == "stderr")
        .all(|(_, o)| field(o, "level") == "error"));
}

#[tokio::test]
async fn text_is_the_default_format_and_can_be_named() {
    for flags in [&[][..], &["--log-format=text"][..]] {
        let mut args = flags.to_vec();
        args.push("/bin/cat");
        let wsd = Wsd::start(&args);
        let c = wsd.connect("/").await;
        c.close().await;
        let line = wsd
            .wait_log("DISCONNECT", SECS5)
            .expect("a DISCONNECT line");
        let parts: Vec<&str> = line.split(" | ").collect();
        assert_eq!(parts.len(), 5, "{line}");
        assert_eq!(parts[1], "ACCESS", "{line}");
        assert!(parts[3].starts_with("url:'http://127.0.0.1:"), "{line}");
        assert!(
            chrono::DateTime::parse_from_rfc2822(parts[0]).is_ok(),
            "{line}"
        );
    }
}

#[test]
fn an_unknown_log_format_is_a_flag_error() {
    assert_usage_error(&["--log-format=xml", "cat"], &["--log-format"]);
}
