//! Admission control before a WebSocket handshake: the cap on connections that have not
//! finished one (`--max-pending`), and the reserve file descriptor that lets wsd still answer
//! 503 when it has run out of descriptors.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Connections without a finished handshake, oldest first. When one more arrives than the cap
/// allows, the oldest is told to close: a slow or idle connection is the one to go, while a
/// real client finishes its handshake within milliseconds of connecting.
pub struct Pending {
    cap: Option<usize>,
    inner: Mutex<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    next: u64,
    open: BTreeMap<u64, (CancellationToken, Instant)>,
}

/// A connection's place among the pending ones; leaving the registry when dropped (at the
/// upgrade, or when the connection closes).
pub struct PendingSlot {
    registry: Arc<Pending>,
    seq: u64,
    /// Cancelled when the connection is evicted to make room for a newer one.
    pub evicted: CancellationToken,
}

/// An eviction: how long the evicted connection had been open.
pub struct Evicted(pub Duration);

impl Pending {
    pub fn new(cap: Option<usize>) -> Arc<Pending> {
        Arc::new(Pending {
            cap,
            inner: Mutex::new(PendingInner::default()),
        })
    }

    /// Registers a new connection, evicting the oldest one if the cap is exceeded.
    pub fn register(self: &Arc<Self>) -> (PendingSlot, Option<Evicted>) {
        let token = CancellationToken::new();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let seq = inner.next;
        inner.next += 1;
        inner.open.insert(seq, (token.clone(), Instant::now()));
        let mut evicted = None;
        if self.cap.is_some_and(|cap| inner.open.len() > cap) {
            if let Some((_, (oldest, opened))) = inner.open.pop_first() {
                oldest.cancel();
                evicted = Some(Evicted(opened.elapsed()));
            }
        }
        let slot = PendingSlot {
            registry: self.clone(),
            seq,
            evicted: token,
        };
        (slot, evicted)
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut inner = self
            .registry
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        inner.open.remove(&self.seq);
    }
}

/// Whether an error means the process or the system has run out of something that comes back
/// by itself (descriptors, processes, memory): the answer is then 503, not 500.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// One descriptor held back (on /dev/null) for the moment the process has run out: closing it
/// makes room to accept one waiting connection and answer it 503, instead of leaving every
/// client hanging in the listen queue.
pub struct Reserve {
    file: Mutex<Option<File>>,
    /// Connections answered 503 since descriptors ran out; 0 when they are available.
    refused: AtomicU64,
}

/// How long a refused connection may take to send its request before the 503 goes out (a
/// response sent over unread data would be lost to a reset).
const REFUSE_READ: Duration = Duration::from_millis(200);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 50\r\n\r\nthe server is out of file descriptors; retry soon\n";

impl Reserve {
    pub fn new() -> Arc<Reserve> {
        Arc::new(Reserve {
            file: Mutex::new(open_reserve()),
            refused: AtomicU64::new(0),
        })
    }

    /// Gives up the held descriptor so that one connection can be accepted. False if there is
    /// none (still in use by the previous refusal, or it could not be reopened).
    pub fn release(&self) -> bool {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            *file = open_reserve();
            return false;
        }
        *file = None;
        true
    }

    /// Takes the reserve back after a release that accepted nothing.
    pub fn restore(&self) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            *file = open_reserve();
        }
    }

    /// Answers a connection accepted with the reserve 503, then takes the reserve back.
    pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(self: Arc<Self>, mut stream: S) {
        crate::metrics::rejected("503");
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            crate::error!(
                "server",
                "out of file descriptors: answering new connections 503 until some are free"
            );
        }
        let mut head = [0u8; 4096];
        let mut seen = 0;
        let _ = tokio::time::timeout(REFUSE_READ, async {
            while seen < head.len() {
                match stream.read(&mut head[seen..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => seen += k,
                }
                if head[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(REFUSE_READ, async {
            let _ = stream.write_all(REFUSAL).await;
            let _ = stream.shutdown().await;
        })
        .await;
        drop(stream);
        self.restore();
    }

    /// Called for each connection accepted normally: logs the end of a shortage.
    pub fn accepted(&self) {
        if self.refused.load(Ordering::Relaxed) > 0 {
            let n = self.refused.swap(0, Ordering::Relaxed);
            if n > 0 {
                crate::error!(
                    "server",
                    "file descriptors are available again; {n} connections were answered 503 meanwhile"
                );
            }
        }
    }
}

fn open_reserve() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Raises the soft limit on open files to the hard limit, as Go programs (websocketd) do: the
/// usual soft limit of 1024 would cap wsd near 250 connections.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                crate::debug!(
                    "server",
                    "open file limit raised from {old} to {}",
                    lim.rlim_max
                );
            }
        }
    }
}
