//! Broadcast: many clients of one feed, a program printing timestamped lines at a fixed rate
//! (see `tick`). Measures the messages delivered to all clients together, the fan-out latency
//! (receipt time minus the stamp in the line), the clients a server closed for being too slow
//! (1013, wsd `--broadcast`'s per-client queue), and the CPU of the server and of its programs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::procfs;
use crate::slices::{percentile, Better, Metric, Sample};
use crate::target::Target;
use crate::tick;

/// Connections opened at once (each may start a program).
const OPEN_PARALLEL: usize = 32;
/// Measuring starts this long after the last client connected, once the programs run.
const WARMUP: Duration = Duration::from_millis(500);

/// What one client saw in the measured window.
#[derive(Default)]
struct Seen {
    msgs: u64,
    latencies_us: Vec<f64>,
    /// Closed with 1013 (too slow), at any time.
    kicked: bool,
    /// Closed otherwise, or the connection failed, before the window ended.
    lost: bool,
}

/// The measured window, sent to the readers once every client is connected.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// Reads one client's messages until `stop` says the window is over; returns what it saw in
/// the window, and the connection for a clean close if it is still open.
async fn receive(
    mut ws: Ws,
    mut window: watch::Receiver<Option<Window>>,
    mut stop: watch::Receiver<bool>,
) -> (Seen, Option<Ws>) {
    let mut seen = Seen::default();
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.wait_for(|s| *s) => return (seen, Some(ws)),
        };
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                match frame {
                    Some(f) if f.code == CloseCode::Again => seen.kicked = true,
                    _ => seen.lost = true,
                }
                return (seen, None);
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                seen.lost = true;
                return (seen, None);
            }
        };
        let Some(latency) = tick::latency_us(&text) else {
            continue;
        };
        let now = Instant::now();
        if let Some(w) = *window.borrow_and_update() {
            if now >= w.start && now < w.end {
                seen.msgs += 1;
                seen.latencies_us.push(latency);
            }
        }
    }
}

/// One slice: `clients` connections, each reading from its connect on; the window opens
/// `WARMUP` after the last one connected and lasts `len`.
pub async fn run(t: Target, len: Duration, clients: usize) -> Result<Sample> {
    let (window_tx, window_rx) = watch::channel(None::<Window>);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mut readers = JoinSet::new();
    let mut failed = 0u64;
    let mut first_error = None;
    let mut opening = stream::iter(0..clients)
        .map(|_| client::connect(t.port))
        .buffer_unordered(OPEN_PARALLEL);
    while let Some(r) = opening.next().await {
        match r {
            Ok(ws) => {
                readers.spawn(receive(ws, window_rx.clone(), stop_rx.clone()));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    drop(opening);
    if let Some(e) = &first_error {
        eprintln!(
            "  broadcast: {}: {failed} of {clients} connections failed, first: {e:#}",
            t.name
        );
    }
    if readers.is_empty() {
        bail!("no client could connect");
    }
    let start = Instant::now() + WARMUP;
    let _ = window_tx.send(Some(Window {
        start,
        end: start + len,
    }));
    tokio::time::sleep_until(start.into()).await;
    let cpu0 = procfs::cpu_micros_precise(t.pid)?;
    let kids0 = children_cpu_micros(t.pid);
    tokio::time::sleep(len).await;
    let secs = start.elapsed().as_secs_f64();
    let cpu = procfs::cpu_micros_precise(t.pid)? - cpu0;
    let kids = children_cpu_micros(t.pid) - kids0;
    let _ = stop_tx.send(true);
    let mut msgs = 0u64;
    let mut latencies = Vec::new();
    let (mut kicked, mut lost) = (0u64, 0u64);
    let mut open = Vec::new();
    while let Some(r) = readers.join_next().await {
        let Ok((seen, ws)) = r else { continue };
        msgs += seen.msgs;
        latencies.extend(seen.latencies_us);
        kicked += u64::from(seen.kicked);
        lost += u64::from(seen.lost);
        open.extend(ws);
    }
    futures_util::future::join_all(open.into_iter().map(client::close_cleanly)).await;
    if msgs == 0 {
        bail!("no stamped line arrived in the measured window");
    }
    latencies.sort_by(f64::total_cmp);
    let n = msgs as f64;
    Ok(vec![
        (
            Metric {
                key: "msgs_per_s",
                label: "delivered msgs/s (all clients)",
                unit: "msg/s",
                better: Better::Higher,
            },
            n / secs,
        ),
        (
            Metric {
                key: "latency_p50_ms",
                label: "fan-out latency p50",
                unit: "ms",
                better: Better::Lower,
            },
            percentile(&latencies, 0.50) / 1e3,
        ),
        (
            Metric {
                key: "latency_p99_ms",
                label: "fan-out latency p99",
                unit: "ms",
                better: Better::Lower,
            },
            percentile(&latencies, 0.99) / 1e3,
        ),
        (
            Metric {
                key: "kicked",
                label: "clients kicked (1013)",
                unit: "",
                better: Better::Zero,
            },
            kicked as f64,
        ),
        (
            Metric {
                key: "lost",
                label: "clients failed or closed otherwise",
                unit: "",
                better: Better::Zero,
            },
            (lost + failed) as f64,
        ),
        (
            Metric {
                key: "server_cpu_pct",
                label: "server's own CPU",
                unit: "% core",
                better: Better::Lower,
            },
            100.0 * cpu / 1e6 / secs,
        ),
        (
            Metric {
                key: "server_cpu_us_per_msg",
                label: "server's own CPU/msg",
                unit: "us",
                better: Better::Lower,
            },
            cpu / n,
        ),
        (
            Metric {
                key: "programs_cpu_pct",
                label: "programs' CPU",
                unit: "% core",
                better: Better::Lower,
            },
            100.0 * kids / 1e6 / secs,
        ),
    ])
}

/// The CPU time of every program the server runs (its descendants), in microseconds.
fn children_cpu_micros(pid: u32) -> f64 {
    procfs::descendants(pid)
        .iter()
        .filter_map(|d| procfs::cpu_micros_precise(d.pid).ok())
        .sum()
}
