//! TLS (`--ssl`, `--sslcert`, `--sslkey`, `--sslca`), its reload on SIGHUP, and
//! `--redirport`, through the real binary. Every certificate is made by the test: a CA, server
//! certificates for 127.0.0.1 and localhost (ECDSA P-256 with PKCS#8 and SEC1 keys; RSA with
//! PKCS#8 and PKCS#1 keys where the `openssl` command exists), and client certificates.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio_tungstenite::{Connector, MaybeTlsStream};

const FIVE_SECONDS: Duration = Duration::from_secs(5);

// ---- certificates ----------------------------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate for 127.0.0.1 and localhost, for `key`.
    fn server_cert(&self, key: &KeyPair, name: &str) -> Certificate {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.signed_by(key, &self.cert, &self.key).unwrap()
    }

    /// A client certificate (for mutual TLS).
    fn client_cert(&self, key: &KeyPair) -> Certificate {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "wsd test client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(key, &self.cert, &self.key).unwrap()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// A SEC1 ("EC PRIVATE KEY") PEM for an ECDSA P-256 key, as OpenSSL and Go write them (with
/// the curve as parameters), rebuilt from the PKCS#8 form rcgen gives.
fn sec1_pem(key: &KeyPair) -> String {
    // PKCS#8: SEQUENCE { INTEGER 0, SEQUENCE { algorithm, curve }, OCTET STRING { SEC1 } }.
    let pkcs8 = key.serialize_der();
    let outer = der_items(der_value(&pkcs8));
    let sec1 = der_value(outer[2]);
    // SEC1 from ring: SEQUENCE { INTEGER 1, OCTET STRING key, [1] public key }; insert [0] curve.
    let parts = der_items(der_value(sec1));
    assert_eq!(parts.len(), 3, "unexpected SEC1 layout from rcgen");
    const PRIME256V1: &[u8] = &[
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let body = [parts[0], parts[1], PRIME256V1, parts[2]].concat();
    pem::encode(&pem::Pem::new("EC PRIVATE KEY", der_tlv(0x30, &body)))
}

/// The length of a DER header and of its value.
fn der_header(tlv: &[u8]) -> (usize, usize) {
    match tlv[1] {
        n if n < 0x80 => (2, n as usize),
        0x81 => (3, tlv[2] as usize),
        0x82 => (4, (tlv[2] as usize) << 8 | tlv[3] as usize),
        other => panic!("DER length form {other:#x} not expected in a P-256 key"),
    }
}

fn der_value(tlv: &[u8]) -> &[u8] {
    let (h, len) = der_header(tlv);
    &tlv[h..h + len]
}

/// The consecutive TLVs of a value, each whole.
fn der_items(mut value: &[u8]) -> Vec<&[u8]> {
    let mut items = Vec::new();
    while !value.is_empty() {
        let (h, len) = der_header(value);
        items.push(&value[..h + len]);
        value = &value[h + len..];
    }
    items
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
    out
}

/// A test's certificate files in a temporary directory.
struct Pki {
    dir: TempDir,
    ca: Ca,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        Pki {
            dir: TempDir::new(tag),
            ca: Ca::new("wsd test CA"),
        }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes a fresh ECDSA server certificate and its key (PKCS#8, or SEC1 with `sec1`) as
    /// `NAME.pem` and `NAME-key.pem`; returns both paths and the certificate.
    fn server(&self, name: &str, sec1: bool) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let cert = self.ca.server_cert(&key, name);
        let key_pem = if sec1 {
            sec1_pem(&key)
        } else {
            key.serialize_pem()
        };
        (
            self.write(&format!("{name}.pem"), &cert.pem()),
            self.write(&format!("{name}-key.pem"), &key_pem),
            cert.der().clone(),
        )
    }

    fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.cert.pem())
    }

    /// A client configuration trusting this CA, for the given protocol versions.
    fn client(&self, versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
        ClientConfig::builder_with_protocol_versions(versions)
            .with_root_certificates(self.ca.roots())
            .with_no_client_auth()
    }

    fn client_default(&self) -> ClientConfig {
        self.client(rustls::DEFAULT_VERSIONS)
    }

    /// A client configuration trusting this CA that presents a certificate signed by `issuer`.
    fn client_with_cert(&self, issuer: &Ca) -> ClientConfig {
        let key = KeyPair::generate().unwrap();
        let cert = issuer.client_cert(&key);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        ClientConfig::builder()
            .with_root_certificates(self.ca.roots())
            .with_client_auth_cert(vec![cert.der().clone()], key)
            .unwrap()
    }
}

// ---- clients ---------------------------------------------------------------------------------

/// A wss:// connection to 127.0.0.1, or the handshake's error.
async fn try_wss(port: u16, path: &str, config: ClientConfig) -> Result<Client, String> {
    let url = format!("wss://127.0.0.1:{port}{path}");
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        true,
        Some(Connector::Rustls(Arc::new(config))),
    );
    match tokio::time::timeout(FIVE_SECONDS, connect).await {
        Err(_) => Err("no handshake within 5 s".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((ws, _))) => Ok(Client { ws }),
    }
}

async fn wss(port: u16, path: &str, config: ClientConfig) -> Client {
    try_wss(port, path, config)
        .await
        .unwrap_or_else(|e| panic!("wss://127.0.0.1:{port}{path}: {e}"))
}

/// Connects over wss:// to `/`, checks that `text` comes back, and closes.
async fn assert_wss_echoes(port: u16, config: ClientConfig, text: &str) {
    let mut c = wss(port, "/", config).await;
    assert_echoes(&mut c, text).await;
    c.close().await;
}

/// The certificate the server presented on a wss:// connection.
fn peer_cert(client: &Client) -> CertificateDer<'static> {
    match client.ws.get_ref() {
        MaybeTlsStream::Rustls(tls) => tls.get_ref().1.peer_certificates().unwrap()[0].clone(),
        _ => panic!("not a TLS connection"),
    }
}

/// The TLS version a wss:// connection negotiated.
fn tls_version(client: &Client) -> rustls::ProtocolVersion {
    match client.ws.get_ref() {
        MaybeTlsStream::Rustls(tls) => tls.get_ref().1.protocol_version().unwrap(),
        _ => panic!("not a TLS connection"),
    }
}

async fn assert_echoes(client: &mut Client, text: &str) {
    client.send_text(text).await;
    assert_eq!(client.recv_text().await, text);
}

/// Starts `wsd --ssl` with the given certificate and key, then `rest` (flags and COMMAND).
fn start_tls(cert: &std::path::Path, key: &std::path::Path, rest: &[&str]) -> GracefulWsd {
    let mut args = vec![
        "--ssl".to_string(),
        format!("--sslcert={}", s(cert)),
        format!("--sslkey={}", s(key)),
    ];
    args.extend(rest.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    GracefulWsd::start(&args)
}

// ---- serving wss:// --------------------------------------------------------------------------

#[tokio::test]
async fn wss_echoes_through_cat_with_an_ecdsa_pkcs8_key() {
    let pki = Pki::new("tls-pkcs8");
    let (cert, key, der) = pki.server("server", false);
    let wsd = start_tls(&cert, &key, &["cat"]);
    let mut c = wss(wsd.port, "/", pki.client_default()).await;
    assert_echoes(&mut c, "secure hello").await;
    assert_eq!(peer_cert(&c), der);
    c.close().await;
    assert!(
        wsd.wait_log("url:'https://127.0.0.1:", FIVE_SECONDS)
            .is_some(),
        "the access log should show an https:// URL: {:?}",
        wsd.stdout()
    );
    assert!(wsd.stdout().iter().any(|l| l.contains(&format!(
        "Starting WebSocket server   : wss://127.0.0.1:{}/",
        wsd.port
    ))));
}

#[tokio::test]
async fn a_sec1_ec_private_key_as_websocketd_tests_write_it_works() {
    let pki = Pki::new("tls-sec1");
    let (cert, key, _) = pki.server("server", true);
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let wsd = start_tls(&cert, &key, &["cat"]);
    assert_wss_echoes(wsd.port, pki.client_default(), "sec1").await;
}

#[tokio::test]
async fn rsa_keys_in_pkcs8_and_pkcs1_form_both_work() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no openssl command to make an RSA key with");
        return;
    }
    let pki = Pki::new("tls-rsa");
    let pkcs8 = pki.dir.path().join("rsa-pkcs8.pem");
    let pkcs1 = pki.dir.path().join("rsa-pkcs1.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .arg("-out")
        .arg(&pkcs8)
        .status()
        .unwrap()
        .success()
        && std::process::Command::new("openssl")
            .args(["rsa", "-traditional", "-in"])
            .arg(&pkcs8)
            .arg("-out")
            .arg(&pkcs1)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl could not make the RSA keys");
    let pkcs8_pem = std::fs::read_to_string(&pkcs8).unwrap();
    assert!(pkcs8_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let key = KeyPair::from_pem_and_sign_algo(&pkcs8_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = pki.write("rsa.pem", &pki.ca.server_cert(&key, "rsa").pem());
    for key_file in [&pkcs8, &pkcs1] {
        let wsd = start_tls(&cert, key_file, &["cat"]);
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
            assert_wss_echoes(wsd.port, pki.client(versions), "rsa").await;
        }
    }
}

#[tokio::test]
async fn tls_1_2_and_tls_1_3_clients_are_both_served() {
    let pki = Pki::new("tls-versions");
    let (cert, key, _) = pki.server("server", false);
    let wsd = start_tls(&cert, &key, &["cat"]);
    for (versions, want) in [
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (&[&rustls::version::TLS13], rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut c = wss(wsd.port, "/", pki.client(versions)).await;
        assert_eq!(tls_version(&c), want);
        assert_echoes(&mut c, "versioned").await;
        c.close().await;
    }
}

/// A ClientHello offering TLS 1.1 at most (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0, 0, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend(handshake);
    record
}

#[tokio::test]
async fn a_client_offering_only_tls_1_1_is_refused() {
    let pki = Pki::new("tls-old");
    let (cert, key, _) = pki.server("server", false);
    let wsd = start_tls(&cert, &key, &["cat"]);
    let mut s = TcpStream::connect(("127.0.0.1", wsd.port)).unwrap();
    s.set_read_timeout(Some(FIVE_SECONDS)).unwrap();
    s.write_all(&tls11_client_hello()).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    // An alert record (21) or nothing at all, never a ServerHello (a handshake record, 22).
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "a TLS 1.1 client got an answer other than an alert: {reply:02x?}"
    );
    assert_wss_echoes(wsd.port, pki.client_default(), "still serving").await;
}

#[tokio::test]
async fn the_program_sees_https_on() {
    let pki = Pki::new("tls-env");
    let (cert, key, _) = pki.server("server", false);
    let dir = TempDir::new("tls-env-script");
    let script = dir.script("env.sh", r#"echo "HTTPS=$HTTPS SERVER_PORT=$SERVER_PORT""#);
    let wsd = start_tls(&cert, &key, &[s(&script)]);
    let mut c = wss(wsd.port, "/", pki.client_default()).await;
    assert_eq!(
        c.recv_text().await,
        format!("HTTPS=on SERVER_PORT={}", wsd.port)
    );
}

/// A wss:// upgrade to 127.0.0.1 with the given Host and Origin headers.
async fn try_wss_with(
    port: u16,
    host: &str,
    origin: &str,
    config: ClientConfig,
) -> Result<Client, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("wss://127.0.0.1:{port}/")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("Host", host.parse().unwrap());
    request
        .headers_mut()
        .insert("Origin", origin.parse().unwrap());
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        true,
        Some(Connector::Rustls(Arc::new(config))),
    );
    match tokio::time::timeout(FIVE_SECONDS, connect).await {
        Err(_) => Err("no handshake within 5 s".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((ws, _))) => Ok(Client { ws }),
    }
}

#[tokio::test]
async fn sameorigin_over_tls_takes_443_as_the_default_port_of_the_host() {
    let pki = Pki::new("tls-sameorigin");
    let (cert, key, _) = pki.server("server", false);
    let wsd = start_tls(&cert, &key, &["--sameorigin", "cat"]);
    // A page at https://localhost/ opening wss://localhost/: neither header names a port.
    let mut c = try_wss_with(
        wsd.port,
        "localhost",
        "https://localhost",
        pki.client_default(),
    )
    .await
    .expect("same origin over TLS is accepted");
    assert_echoes(&mut c, "same origin").await;
    c.close().await;
    let refused = try_wss_with(
        wsd.port,
        "localhost",
        "http://localhost",
        pki.client_default(),
    )
    .await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("403")),
        "an http:// origin on port 80 is another origin: {:?}",
        refused.map(|_| ())
    );
}

#[tokio::test]
async fn without_ssl_the_program_has_no_https_variable() {
    let dir = TempDir::new("tls-noenv");
    let script = dir.script("env.sh", r#"echo "HTTPS=${HTTPS-unset}""#);
    let wsd = GracefulWsd::start(&[s(&script)]);
    let mut c = wsd.connect("/").await;
    assert_eq!(c.recv_text().await, "HTTPS=unset");
}

#[tokio::test]
async fn go_style_flag_spellings_work_for_tls() {
    let pki = Pki::new("tls-spelling");
    let (cert, key, _) = pki.server("server", false);
    let wsd = GracefulWsd::start(&["-ssl", "-sslcert", s(&cert), "-sslkey", s(&key), "cat"]);
    assert_wss_echoes(wsd.port, pki.client_default(), "spelled").await;
}

#[tokio::test]
async fn with_ssl_the_unix_socket_speaks_tls_too() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new("tls-unix");
    let (cert, key, der) = pki.server("server", false);
    let sock = pki.dir.path().join("wsd.sock");
    let wsd = start_tls(&cert, &key, &[&format!("--unixsocket={}", s(&sock)), "cat"]);
    assert!(wait_until(FIVE_SECONDS, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }));
    let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_default()));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(FIVE_SECONDS, connector.connect(name, stream))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake over the unix socket");
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], der);
    let (mut ws, _) = tokio::time::timeout(
        FIVE_SECONDS,
        tokio_tungstenite::client_async("wss://localhost/", tls),
    )
    .await
    .expect("handshake in time")
    .expect("WebSocket handshake over TLS over the unix socket");
    ws.send(Message::Text("unix and tls".into())).await.unwrap();
    let echoed = tokio::time::timeout(FIVE_SECONDS, ws.next()).await.unwrap();
    assert_eq!(
        echoed.unwrap().unwrap(),
        Message::Text("unix and tls".into())
    );
    let _ = ws.close(None).await;
    drop(wsd);
}

// ---- what is not a TLS client ----------------------------------------------------------------

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_400_and_the_server_keeps_serving() {
    let pki = Pki::new("tls-plain");
    let (cert, key, _) = pki.server("server", false);
    let wsd = start_tls(&cert, &key, &["cat"]);
    let response = raw_http(wsd.port, &upgrade_request("/", ""));
    assert_eq!(status_of(&response), 400, "{response}");
    assert!(
        response.contains("HTTP request to an HTTPS server"),
        "{response}"
    );
    assert_wss_echoes(wsd.port, pki.client_default(), "after plain http").await;
}

#[tokio::test]
async fn bare_tcp_connections_and_silent_ones_do_not_hold_up_other_clients() {
    let pki = Pki::new("tls-bare");
    let (cert, key, _) = pki.server("server", false);
    let wsd = start_tls(&cert, &key, &["cat"]);
    // Connect-and-close, as websocketd's suite and port scanners do.
    for _ in 0..20 {
        drop(TcpStream::connect(("127.0.0.1", wsd.port)).unwrap());
    }
    // Connections that never send a byte, held open meanwhile.
    let silent: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", wsd.port)).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let mut c = wss(wsd.port, "/", pki.client_default()).await;
    assert_echoes(&mut c, "not held up").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the handshake waited {:?} behind silent connections",
        started.elapsed()
    );
    c.close().await;
    drop(silent);
    assert!(wsd.0.child.id() > 0 && alive(wsd.pid()), "wsd died");
    let errors: Vec<String> = wsd
        .stdout()
        .into_iter()
        .filter(|l| l.contains("| ERROR") || l.contains("| FATAL"))
        .collect();
    assert!(errors.is_empty(), "errors logged: {errors:?}");
}

#[tokio::test]
async fn a_connection_without_a_handshake_is_closed_after_the_header_timeout() {
    let pki = Pki::new("tls-idle");
    let (cert, key, _) = pki.server("server", false);
    let wsd = start_tls(&cert, &key, &["--header-timeout-ms=300", "cat"]);
    let mut s = TcpStream::connect(("127.0.0.1", wsd.port)).unwrap();
    s.set_read_timeout(Some(FIVE_SECONDS)).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the connection");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );
    assert!(wsd
        .wait_log("no TLS handshake in time", FIVE_SECONDS)
        .is_some());
}

// ---- mutual TLS ------------------------------------------------------------------------------

fn start_mtls(pki: &Pki) -> GracefulWsd {
    let (cert, key, _) = pki.server("server", true);
    let ca = pki.ca_file();
    start_tls(&cert, &key, &[&format!("--sslca={}", s(&ca)), "cat"])
}

#[tokio::test]
async fn mutual_tls_accepts_a_client_certificate_signed_by_the_ca() {
    let pki = Pki::new("tls-mtls-ok");
    let wsd = start_mtls(&pki);
    assert_wss_echoes(wsd.port, pki.client_with_cert(&pki.ca), "mtls hello").await;
}

#[tokio::test]
async fn mutual_tls_rejects_a_client_without_a_certificate() {
    let pki = Pki::new("tls-mtls-none");
    let wsd = start_mtls(&pki);
    let refused = try_wss(wsd.port, "/", pki.client_default()).await;
    assert!(
        refused.is_err(),
        "a client without a certificate was let in"
    );
    assert!(wsd
        .wait_log("TLS handshake with 127.0.0.1 failed", FIVE_SECONDS)
        .is_some());
}

#[tokio::test]
async fn mutual_tls_rejects_a_client_certificate_from_another_ca() {
    let pki = Pki::new("tls-mtls-other");
    let wsd = start_mtls(&pki);
    let stranger = Ca::new("some other CA");
    let refused = try_wss(wsd.port, "/", pki.client_with_cert(&stranger)).await;
    assert!(refused.is_err(), "a client of another CA was let in");
}

// ---- reloading on SIGHUP ---------------------------------------------------------------------

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_carry_on() {
    let pki = Pki::new("tls-reload");
    let (cert, key, der_a) = pki.server("live", false);
    let wsd = start_tls(&cert, &key, &["cat"]);
    let mut old = wss(wsd.port, "/", pki.client_default()).await;
    assert_eq!(peer_cert(&old), der_a);

    // The renewal writes new files over the old ones, then signals.
    let (_, _, der_b) = pki.server("renewed", true);
    std::fs::copy(pki.dir.path().join("renewed.pem"), &cert).unwrap();
    std::fs::copy(pki.dir.path().join("renewed-key.pem"), &key).unwrap();
    wsd.signal(libc::SIGHUP);
    assert!(
        wsd.wait_log("SIGHUP: reloaded", FIVE_SECONDS).is_some(),
        "no reload logged: {:?}",
        wsd.stdout()
    );
    let mut new = wss(wsd.port, "/", pki.client_default()).await;
    assert_eq!(
        peer_cert(&new),
        der_b,
        "a new connection still got the old certificate"
    );
    assert_echoes(&mut new, "new").await;
    assert_echoes(&mut old, "old connection still echoes").await;

    // A broken renewal (the key of another certificate) keeps the working certificate.
    let (_, stray_key, _) = pki.server("stray", false);
    std::fs::copy(&stray_key, &key).unwrap();
    wsd.signal(libc::SIGHUP);
    let failed = wsd.wait_log("SIGHUP: reload failed", FIVE_SECONDS);
    assert!(failed.is_some(), "no failure logged: {:?}", wsd.stdout());
    assert!(failed
        .unwrap()
        .contains("does not belong to the certificate"));
    let mut third = wss(wsd.port, "/", pki.client_default()).await;
    assert_eq!(peer_cert(&third), der_b);
    assert_echoes(&mut third, "third").await;
    assert_echoes(&mut old, "old still").await;
    for c in [old, new, third] {
        c.close().await;
    }
}

#[tokio::test]
async fn sighup_without_ssl_is_harmless() {
    let wsd = GracefulWsd::start(&["cat"]);
    wsd.signal(libc::SIGHUP);
    assert!(wsd
        .wait_log("SIGHUP: nothing to reload", FIVE_SECONDS)
        .is_some());
    let mut c = wsd.connect("/").await;
    assert_echoes(&mut c, "still here").await;
    c.close().await;
}

// ---- --redirport -----------------------------------------------------------------------------

#[tokio::test]
async fn redirport_answers_301_to_the_https_url_with_path_and_query() {
    let pki = Pki::new("tls-redir");
    let (cert, key, _) = pki.server("server", false);
    let redir = free_port();
    let wsd = start_tls(&cert, &key, &[&format!("--redirport={redir}"), "cat"]);
    wsd.assert_listening(redir);
    let response = raw_http(
        redir,
        b"GET /chat/room?x=1 HTTP/1.1\r\nHost: localhost:9999\r\n\r\n",
    );
    assert_eq!(status_of(&response), 301, "{response}");
    let location = response
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("location: ")
                .map(|_| l[10..].to_string())
        })
        .unwrap_or_else(|| panic!("no Location: {response}"));
    assert_eq!(
        location,
        format!("https://localhost:{}/chat/room?x=1", wsd.port)
    );
    // Without a Host header, the address the client reached.
    let response = raw_http(redir, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        response.contains(&format!("https://127.0.0.1:{}/", wsd.port)),
        "{response}"
    );
    // The main port is still TLS.
    assert_wss_echoes(wsd.port, pki.client_default(), "redirected").await;
}

#[test]
fn redirport_equal_to_the_main_port_is_a_usage_error() {
    assert_usage_error(
        &["--port=8080", "--redirport=8080", "cat"],
        &["--redirport"],
    );
}

// ---- flag and file errors --------------------------------------------------------------------

#[test]
fn ssl_without_both_certificate_and_key_is_a_usage_error() {
    for args in [
        &["--ssl", "cat"][..],
        &["--ssl", "--sslcert=c.pem", "cat"],
        &["--ssl", "--sslkey=k.pem", "cat"],
    ] {
        assert_usage_error(args, &["--sslcert", "--sslkey", "--ssl"]);
    }
}

#[test]
fn ssl_file_flags_without_ssl_are_a_usage_error() {
    for args in [
        &["--sslcert=c.pem", "--sslkey=k.pem", "cat"][..],
        &["--sslca=ca.pem", "cat"],
        &["--ssl=false", "--sslcert=c.pem", "cat"],
    ] {
        assert_usage_error(args, &["should not be using --ssl* flags"]);
    }
}

#[test]
fn unusable_certificate_files_stop_wsd_with_one_line_naming_the_file() {
    let pki = Pki::new("tls-bad-files");
    let (cert, key, _) = pki.server("server", false);
    let (_, other_key, _) = pki.server("other", false);
    let garbage = pki.write("garbage.pem", "not a PEM file at all\n");
    let bad_base64 = pki.write(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let missing = pki.dir.path().join("missing.pem");
    // (--sslcert, --sslkey, --sslca, what the error line names)
    let cases: [(&Path, &Path, Option<&Path>, &[&str]); 8] = [
        (
            &missing,
            &key,
            None,
            &["--sslcert", s(&missing), "No such file"],
        ),
        (&cert, &missing, None, &["--sslkey", s(&missing)]),
        (
            &cert,
            &other_key,
            None,
            &["--sslkey", s(&other_key), "does not belong"],
        ),
        (
            &garbage,
            &key,
            None,
            &["--sslcert", s(&garbage), "no certificate"],
        ),
        (&bad_base64, &key, None, &["--sslcert", s(&bad_base64)]),
        (
            &cert,
            &cert,
            None,
            &["--sslkey", s(&cert), "no private key"],
        ),
        (&cert, &key, Some(&garbage), &["--sslca", s(&garbage)]),
        (&cert, &key, Some(&missing), &["--sslca", s(&missing)]),
    ];
    for (cert, key, ca, needles) in cases {
        let mut args = vec![
            "--ssl".to_string(),
            "--port=1".to_string(),
            format!("--sslcert={}", s(cert)),
            format!("--sslkey={}", s(key)),
        ];
        args.extend(ca.map(|ca| format!("--sslca={}", s(ca))));
        args.push("cat".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_usage_error(&args, needles);
    }
}

#[test]
fn the_port_defaults_to_443_with_ssl() {
    let pki = Pki::new("tls-443");
    let (cert, key, _) = pki.server("server", false);
    let mut child = std::process::Command::new(wsd_bin())
        .args(["--ssl", "--address=127.0.0.1", "--loglevel=info"])
        .arg(format!("--sslcert={}", s(&cert)))
        .arg(format!("--sslkey={}", s(&key)))
        .arg("cat")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Whether it may bind 443 here or not, the first line names the port it tried.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let deadline = std::time::Instant::now() + FIVE_SECONDS;
    while !text.contains("127.0.0.1:443") && std::time::Instant::now() < deadline {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0) == 0 {
            break;
        }
        text.push_str(&line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("127.0.0.1:443"), "{text}");
}
