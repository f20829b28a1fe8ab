//! `--ssl`: TLS on every listener, with a certificate that SIGHUP reloads.
//!
//! The files are read once at start-up (a missing, unreadable or mismatched file stops wsd
//! with one line naming the flag and the file) and again on each SIGHUP, so that a renewed
//! certificate (certbot, `systemctl reload`) takes effect without a restart. Each reload
//! builds a whole new rustls configuration (certificate, key and, with `--sslca`, the client
//! CA) and swaps it in for the handshakes that follow; connections already open keep the
//! one they started with. A reload that fails keeps the previous configuration.
//!
//! The handshake runs in the connection's own task, bounded by `--header-timeout-ms`, so a
//! client that connects and sends nothing holds up no one else. Its first byte tells a TLS
//! client from a plain HTTP one, which gets a readable 400 instead of a TLS alert.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The handshake's bound when `--header-timeout-ms=0` turned off the header limit: a TLS
/// handshake takes a few round trips, and an unbounded one would be a free slowloris.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a plain HTTP client on the TLS port may take to send its request and read the
/// 400 (a response sent over unread data would be lost to a reset).
const PLAIN_HTTP_GRACE: Duration = Duration::from_millis(500);

/// Go's answer to plain HTTP on a TLS port, which websocketd's users will recognise.
const PLAIN_HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The files `--sslcert`, `--sslkey` and `--sslca` name.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `--sslca`: client certificates must be signed by one of these CAs.
    pub ca: Option<PathBuf>,
}

/// The server's TLS side: the files, and the configuration the next handshake will use.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads and checks the files. The error is one line naming the flag and the file.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let config = server_config(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again for the handshakes to come; on failure the previous
    /// configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Logs what start-up loaded, as websocketd announces mutual TLS.
    pub fn log_start(&self) {
        crate::info!(
            "server",
            "TLS certificate and key     : {} {}",
            self.files.cert.display(),
            self.files.key.display()
        );
        if let Some(ca) = &self.files.ca {
            crate::info!(
                "server",
                "Mutual TLS enabled (client certs verified against {})",
                ca.display()
            );
        }
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server side of a TLS handshake on `io`, bounded by `limit` (10 s when `None`).
    /// `None` when there is no TLS connection to serve; the reason was logged once.
    pub async fn accept<S>(
        &self,
        mut io: S,
        remote: Option<SocketAddr>,
        limit: Option<Duration>,
    ) -> Option<TlsStream<Rewind<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let deadline = Instant::now() + limit.unwrap_or(HANDSHAKE_TIMEOUT);
        let who = crate::http::client_ip(remote);
        let timed_out = || {
            crate::access!(
                "tls",
                "closed a connection from {who}: no TLS handshake in time"
            )
        };
        let mut first = [0u8; 1];
        match timeout_at(deadline, io.read(&mut first)).await {
            Err(_) => {
                timed_out();
                return None;
            }
            Ok(Ok(0)) => {
                // Port scanners and health checks that only open a TCP connection.
                crate::debug!("tls", "connection from {who} closed before a TLS handshake");
                return None;
            }
            Ok(Err(e)) => {
                crate::debug!(
                    "tls",
                    "connection from {who} failed before a TLS handshake: {e}"
                );
                return None;
            }
            Ok(Ok(_)) => {}
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            if first[0].is_ascii_uppercase() {
                crate::access!(
                    "tls",
                    "400: plain HTTP from {who} on the TLS port (use https:// or wss://)"
                );
                refuse_plain_http(io).await;
            } else {
                crate::access!("tls", "TLS handshake with {who} failed: not a TLS client");
            }
            return None;
        }
        let acceptor = TlsAcceptor::from(self.current());
        let rewound = Rewind {
            first: Some(first[0]),
            inner: io,
        };
        match timeout_at(deadline, acceptor.accept(rewound)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                crate::access!("tls", "TLS handshake with {who} failed: {e}");
                None
            }
            Err(_) => {
                timed_out();
                None
            }
        }
    }
}

/// Answers a plain HTTP request on the TLS port with a 400, after reading it (bounded).
async fn refuse_plain_http<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let _ = tokio::time::timeout(PLAIN_HTTP_GRACE, async {
        let mut head = [0u8; 4096];
        let mut seen = 0;
        while seen < head.len() && !head[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
            match io.read(&mut head[seen..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
        let _ = io.write_all(PLAIN_HTTP_REFUSAL).await;
        let _ = io.shutdown().await;
        // Wait for the client to close first, so that the 400 is not lost to a reset.
        let mut sink = [0u8; 1024];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The rustls configuration for the files: TLS 1.2 and 1.3, ALPN http/1.1, and with
/// `--sslca` a required client certificate.
fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("--sslcert", &files.cert)?;
    let key = read_key(&files.key)?;
    let certified = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "--sslkey: the key in '{}' does not belong to the certificate in '{}'",
            files.key.display(),
            files.cert.display()
        ),
        rustls::Error::InvalidCertificate(why) => format!(
            "--sslcert: cannot parse the certificate in '{}' ({why:?})",
            files.cert.display()
        ),
        e => format!(
            "--sslkey: the key in '{}' cannot be used: {e}",
            files.key.display()
        ),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("--ssl: {e}"))?;
    let builder = match &files.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("--sslca", ca)? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "--sslca: '{}' holds a certificate that cannot be used: {e}",
                        ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--sslca: '{}' cannot be used: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_file(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "{flag}: cannot read '{}': {}",
            path.display(),
            crate::log::os_error_text(&e)
        )
    })
}

/// Every certificate in a PEM file, in order (a chain: the server's own first).
fn read_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag}: '{}' is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag}: no certificate in '{}' (expected a PEM block \"BEGIN CERTIFICATE\")",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file("--sslkey", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "--sslkey: no private key in '{}' (expected an unencrypted PEM block \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
            path.display()
        ),
        e => format!("--sslkey: '{}' is not valid PEM: {e}", path.display()),
    })
}

/// A stream whose first byte was read ahead (to tell TLS from plain HTTP) and is given back
/// to the first read.
pub struct Rewind<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(b) = self.first.take() {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// SIGHUP: reloads the TLS files; without `--ssl` it only says there is nothing to reload
/// (rather than die of the signal's default action, as a stray `systemctl reload` would make
/// it).
pub struct Reloader {
    hangups: Option<Signal>,
    tls: Option<Arc<Tls>>,
}

impl Reloader {
    /// Installs the handler; call it early, so that no SIGHUP can kill wsd once it listens.
    pub fn install(tls: Option<Arc<Tls>>) -> Reloader {
        let hangups = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                crate::error!("server", "cannot handle SIGHUP ({e}): it will stop wsd");
                None
            }
        };
        Reloader { hangups, tls }
    }

    /// Handles each SIGHUP until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(mut hangups) = self.hangups else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            let Some(tls) = &self.tls else {
                crate::info!("server", "SIGHUP: nothing to reload (no --ssl)");
                continue;
            };
            let files = tls.files();
            match tls.reload() {
                Ok(()) => crate::info!(
                    "server",
                    "SIGHUP: reloaded the TLS certificate '{}' and key '{}'{}; open connections keep theirs",
                    files.cert.display(),
                    files.key.display(),
                    files
                        .ca
                        .as_ref()
                        .map(|ca| format!(" and the client CA '{}'", ca.display()))
                        .unwrap_or_default()
                ),
                Err(e) => crate::error!(
                    "server",
                    "SIGHUP: reload failed, still using the previous certificate: {e}"
                ),
            }
        }
    }
}
