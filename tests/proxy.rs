//! Reverse proxies: `--trusted-proxy` through raw requests (what a trusted proxy may say, and
//! that nobody else can say it), then behind real nginx started with the configuration the
//! README gives, including two wsd instances behind one nginx upstream.
//!
//! The nginx tests need Debian's `nginx` package (scripts/test.sh installs it); without an
//! nginx binary they print a skip line and pass.
mod common;
use common::*;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

const SECS5: Duration = Duration::from_secs(5);

/// Prints the request variables a proxy changes, then exits.
const SHOW_REMOTE: &str =
    r#"echo "addr=$REMOTE_ADDR port=$REMOTE_PORT host=$REMOTE_HOST https=${HTTPS-unset}""#;

/// What SHOW_REMOTE printed, as a map.
fn parse_remote(line: &str) -> BTreeMap<String, String> {
    line.split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Raw upgrade request to `port` with extra header lines; the program's first message.
fn first_message_of_raw_upgrade(port: u16, extra: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(SECS5)).unwrap();
    s.write_all(&upgrade_request("/", extra)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The head, then a first frame: short, unmasked, text.
    let frame = loop {
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        let body = &got[end + 4..];
        if body.len() >= 2 && body.len() >= 2 + usize::from(body[1] & 0x7f) {
            break body.to_vec();
        }
    };
    assert_eq!(frame[0], 0x81, "not a text frame: {frame:?}");
    let len = usize::from(frame[1] & 0x7f);
    String::from_utf8_lossy(&frame[2..2 + len]).into_owned()
}

fn remote_of(port: u16, extra: &str) -> BTreeMap<String, String> {
    parse_remote(&first_message_of_raw_upgrade(port, extra))
}

/// Headers a client could send to pass itself off as someone else over https.
const SPOOF: &str = "X-Forwarded-For: 203.0.113.66\r\nForwarded: for=203.0.113.67;proto=https\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n";

#[test]
fn without_trusted_proxy_the_forwarding_headers_are_ignored() {
    let wsd = Wsd::start(&["/bin/sh", "-c", SHOW_REMOTE]);
    let r = remote_of(wsd.port, SPOOF);
    assert_eq!(r["addr"], "127.0.0.1");
    assert!(r["port"].parse::<u16>().is_ok(), "{r:?}");
    assert_eq!(r["https"], "unset");
}

#[test]
fn a_peer_outside_the_trusted_ranges_cannot_spoof_its_address() {
    let wsd = Wsd::start(&[
        "--trusted-proxy=10.0.0.0/8,fd00::/8",
        "/bin/sh",
        "-c",
        SHOW_REMOTE,
    ]);
    let r = remote_of(wsd.port, SPOOF);
    assert_eq!(r["addr"], "127.0.0.1");
    assert_eq!(r["https"], "unset");
}

#[test]
fn a_trusted_proxy_names_the_client_with_x_forwarded_for_and_proto() {
    let wsd = Wsd::start(&["--trusted-proxy=127.0.0.0/8", "/bin/sh", "-c", SHOW_REMOTE]);
    // The client forged the first entry; the trusted proxy appended what it saw.
    let r = remote_of(
        wsd.port,
        "X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nX-Forwarded-Proto: https\r\n",
    );
    assert_eq!(r["addr"], "203.0.113.7");
    assert_eq!(r["host"], "203.0.113.7");
    assert_eq!(r["port"], "", "X-Forwarded-For carries no port");
    assert_eq!(r["https"], "on");
    assert!(
        wsd.wait_log("remote:'203.0.113.7'", SECS5).is_some(),
        "the log names the client: {:?}",
        wsd.stdout()
    );
}

#[test]
fn the_forwarded_header_gives_address_and_port() {
    let wsd = Wsd::start(&["--trusted-proxy=127.0.0.1", "/bin/sh", "-c", SHOW_REMOTE]);
    let r = remote_of(
        wsd.port,
        "Forwarded: for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https\r\n",
    );
    assert_eq!(r["addr"], "2001:db8::7");
    assert_eq!(r["port"], "4711");
    assert_eq!(r["https"], "on");
    let r = remote_of(wsd.port, "Forwarded: for=198.51.100.3;proto=http\r\n");
    assert_eq!(r["addr"], "198.51.100.3");
    assert_eq!(r["https"], "unset");
}

#[test]
fn sameorigin_compares_with_the_forwarded_host_and_scheme() {
    let trusted = Wsd::start(&[
        "--sameorigin",
        "--trusted-proxy=127.0.0.1",
        "/bin/sh",
        "-c",
        SHOW_REMOTE,
    ]);
    let via_proxy = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: chat.example\r\n";
    let status = |wsd: &Wsd, origin: &str| {
        status_of(&raw_http(
            wsd.port,
            &upgrade_request("/", &format!("{via_proxy}Origin: {origin}\r\n")),
        ))
    };
    assert_eq!(status(&trusted, "https://chat.example"), 101);
    assert_eq!(status(&trusted, "https://chat.example:443"), 101);
    assert_eq!(
        status(&trusted, "http://chat.example"),
        403,
        "scheme differs"
    );
    assert_eq!(status(&trusted, "http://127.0.0.1"), 403);
    // Nobody else can make wsd believe the page came from the forwarded host.
    let untrusted = Wsd::start(&["--sameorigin", "/bin/sh", "-c", SHOW_REMOTE]);
    assert_eq!(status(&untrusted, "https://chat.example"), 403);
    assert_eq!(
        status(&untrusted, "http://127.0.0.1"),
        101,
        "Host is 127.0.0.1"
    );
}

#[test]
fn a_bad_trusted_proxy_is_a_flag_error() {
    for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/x", ""] {
        assert_usage_error(
            &[&format!("--trusted-proxy={bad}"), "cat"],
            &["--trusted-proxy"],
        );
    }
}

// ---- behind nginx --------------------------------------------------------------------------

/// The nginx binary, if installed.
fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The nginx configuration in the README (the one users copy), fenced after its marker.
fn readme_nginx_config() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let after = readme
        .split_once("<!-- nginx config: tests/proxy.rs runs this -->")
        .expect("the README marks its nginx configuration")
        .1;
    let block = after
        .split_once("```nginx\n")
        .expect("an nginx code block after the marker")
        .1;
    block
        .split_once("```")
        .expect("the code block ends")
        .0
        .to_string()
}

/// nginx, started with the README's configuration around it, stopped by PID on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx in front of the wsd instances on `upstreams` (the README lists two).
    fn start(bin: &Path, upstreams: [u16; 2]) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.path().display();
        let users = readme_nginx_config();
        let site = users
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
            .replace(
                "server 127.0.0.1:8080;",
                &format!("server 127.0.0.1:{};", upstreams[0]),
            )
            .replace(
                "server 127.0.0.1:8081;",
                &format!("server 127.0.0.1:{};", upstreams[1]),
            );
        assert_ne!(
            site, users,
            "the README's config changed shape; update this test"
        );
        // As root, nginx's workers would switch to a user that may not reach the temp dir.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n{site}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off; master_process on;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, dir };
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let _ = nginx.child.kill();
            let out = nginx.child.wait_with_output_now();
            panic!(
                "nginx did not start: {out}\nerror.log: {}",
                std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default()
            );
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

trait WaitOutput {
    fn wait_with_output_now(&mut self) -> String;
}

impl WaitOutput for Child {
    fn wait_with_output_now(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let master = self.child.id();
        let workers = children_of(master);
        // SIGTERM: nginx's fast shutdown; the master stops its workers.
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(master as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + SECS5;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for w in workers {
            if alive(w) {
                // SAFETY: as above; a worker of the nginx this test started.
                unsafe { libc::kill(w as i32, libc::SIGKILL) };
            }
        }
    }
}

/// A WebSocket client connecting from `source` (127.0.0.2 makes a client distinguishable from
/// nginx, which connects to wsd from 127.0.0.1), with extra request headers.
async fn connect_from(source: IpAddr, url: &str, headers: &[(&str, &str)]) -> Client {
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let port = req.uri().port_u16().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let (ws, _) = tokio::time::timeout(
        SECS5,
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake through nginx");
    Client { ws }
}

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Says which instance it is and who the client is, then echoes lines.
const INSTANCE: &str = r#"echo "instance=$WSD_INSTANCE addr=$REMOTE_ADDR xff=$(echo "$HTTP_X_FORWARDED_FOR" | tr -d ' ')"; exec cat"#;

fn start_instance(name: &str) -> GracefulWsd {
    let wsd = Wsd::start_with(
        &[
            "--trusted-proxy=127.0.0.1",
            "--sameorigin",
            "--passenv=PATH,WSD_INSTANCE",
            "/bin/sh",
            "-c",
            INSTANCE,
        ],
        |cmd| {
            cmd.env("WSD_INSTANCE", name);
        },
    );
    GracefulWsd(wsd)
}

#[tokio::test]
async fn behind_nginx_the_program_sees_the_real_client_and_forged_headers_fail() {
    let Some(bin) = nginx_bin() else {
        println!("skipped: nginx is not installed (Debian package nginx)");
        return;
    };
    let wsd = start_instance("only");
    let nginx = Nginx::start(&bin, [wsd.port, wsd.port]);
    let origin = format!("http://127.0.0.1:{}", nginx.port);
    let mut c = connect_from(
        CLIENT,
        &nginx.url("/"),
        &[("Origin", &origin), ("X-Forwarded-For", "203.0.113.66")],
    )
    .await;
    let hello = parse_remote(&c.recv_text().await);
    assert_eq!(hello["addr"], "127.0.0.2", "{hello:?}");
    assert_eq!(
        hello["xff"], "203.0.113.66,127.0.0.2",
        "nginx appended the real client to the forged entry"
    );
    // Messages both ways through the proxy.
    for i in 0..3 {
        c.send_text(&format!("line {i}")).await;
        assert_eq!(c.recv_text().await, format!("line {i}"));
    }
    c.close().await;
    assert!(wsd.wait_log("remote:'127.0.0.2'", SECS5).is_some());

    // The origin check sees the host the browser asked nginx for.
    let mut req = nginx.url("/").into_client_request().unwrap();
    req.headers_mut().insert(
        "origin",
        HeaderValue::from_static("http://elsewhere.example"),
    );
    let refused = tokio_tungstenite::connect_async(req).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("expected 403 through nginx, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn two_wsd_instances_behind_one_nginx_upstream_share_the_clients() {
    let Some(bin) = nginx_bin() else {
        println!("skipped: nginx is not installed (Debian package nginx)");
        return;
    };
    let mut a = start_instance("a");
    let b = start_instance("b");
    let nginx = Nginx::start(&bin, [a.port, b.port]);
    let origin = format!("http://127.0.0.1:{}", nginx.port);
    let mut clients = Vec::new();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..6 {
        let mut c = connect_from(CLIENT, &nginx.url("/"), &[("Origin", &origin)]).await;
        let hello = parse_remote(&c.recv_text().await);
        assert_eq!(hello["addr"], "127.0.0.2");
        *seen.entry(hello["instance"].clone()).or_default() += 1;
        clients.push(c);
    }
    assert_eq!(
        seen,
        BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 3)]),
        "nginx balances round robin over both instances"
    );
    // Every connection is a live session on its instance.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_text(&format!("to {i}")).await;
        assert_eq!(c.recv_text().await, format!("to {i}"));
    }

    // One instance goes away: its clients get 1001 through nginx, new ones go to the other.
    a.signal(libc::SIGTERM);
    let mut a_closed = 0;
    for c in clients.iter_mut() {
        if let Event::Close(Some((1001, _))) = c.next_event(Duration::from_millis(500)).await {
            a_closed += 1;
        }
    }
    assert_eq!(
        a_closed, 3,
        "the clients of instance a were told it went away"
    );
    assert_eq!(a.wait_exit(SECS5).and_then(|s| s.code()), Some(0));
    for _ in 0..4 {
        let mut c = connect_from(CLIENT, &nginx.url("/"), &[("Origin", &origin)]).await;
        let hello = parse_remote(&c.recv_text().await);
        assert_eq!(hello["instance"], "b", "{hello:?}");
        c.close().await;
    }
    drop(b);
    drop(nginx);
}
