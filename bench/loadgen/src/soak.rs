//! Soak: thousands of connect/echo/disconnect cycles that leave in all three ways a client
//! can (close frame, FIN without a close frame, RST), then a count of what the server kept:
//! children, zombies, file descriptors, threads, memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::{self, StreamExt};

use crate::client;
use crate::procfs;
use crate::slices::{record, Better, Metric, Sample};
use crate::target::Target;

/// Unmeasured cycles first, so that lazily built state (buffers, thread pools) is in the
/// baseline rather than counted as growth.
const WARMUP_CYCLES: usize = 200;
/// How long the server may take to finish the warm-up's connections.
const WARMUP_SETTLE_LIMIT: Duration = Duration::from_secs(3);
/// How long the server may take to finish the last connections' teardown (up to the full
/// SIGINT, SIGTERM, SIGKILL schedule) and for idle pool threads to retire (tokio keeps an idle
/// blocking thread for 10 s).
const SETTLE_LIMIT: Duration = Duration::from_secs(12);

/// How cycle `i` leaves.
fn leave_kind(i: usize) -> usize {
    i % 3
}

async fn cycle(port: u16, i: usize) -> Result<()> {
    let mut ws = client::connect(port).await?;
    client::round_trip(&mut ws, "soak").await?;
    match leave_kind(i) {
        0 => client::close_cleanly(ws).await,
        1 => drop(ws),
        _ => {
            ws.get_ref().set_zero_linger().context("SO_LINGER 0")?;
            drop(ws);
        }
    }
    Ok(())
}

async fn cycles(
    port: u16,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> (u64, Option<anyhow::Error>) {
    let mut failed = 0;
    let mut first = None;
    let mut results = stream::iter(range)
        .map(|i| cycle(port, i))
        .buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            failed += 1;
            first.get_or_insert(e);
        }
    }
    (failed, first)
}

/// Waits until the server has no children and is back to its file descriptor and thread
/// counts, or the limit passes.
async fn settle(pid: u32, fds0: u64, threads0: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let clean = procfs::descendants(pid).is_empty()
            && procfs::fds(pid).is_ok_and(|f| f <= fds0)
            && procfs::threads(pid).is_ok_and(|t| t <= threads0);
        if clean {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(t: &Target, n: usize, concurrency: usize) -> Result<serde_json::Value> {
    cycles(t.port, 0..WARMUP_CYCLES.min(n), concurrency).await;
    settle(t.pid, u64::MAX, u64::MAX, WARMUP_SETTLE_LIMIT).await;
    let rss0 = procfs::rss_kib(t.pid)?;
    let fds0 = procfs::fds(t.pid)?;
    let threads0 = procfs::threads(t.pid)?;
    // In two halves, so that growth that goes on (a leak) can be told from growth that stops
    // (an allocator keeping memory it once needed).
    let started = Instant::now();
    let (failed1, first1) = cycles(t.port, 0..n / 2, concurrency).await;
    let rss_half = procfs::rss_kib(t.pid)?;
    let (failed2, first2) = cycles(t.port, n / 2..n, concurrency).await;
    let rss_end = procfs::rss_kib(t.pid)?;
    let secs = started.elapsed().as_secs_f64();
    let (failed, first) = (failed1 + failed2, first1.or(first2));
    if let Some(e) = &first {
        eprintln!("  soak: {}: {failed} cycles failed, first: {e:#}", t.name);
    }
    settle(t.pid, fds0, threads0, SETTLE_LIMIT).await;
    let kids = procfs::descendants(t.pid);
    let zombies = kids.iter().filter(|d| d.state == 'Z').count();
    let zero = |key, label| Metric {
        key,
        label,
        unit: "",
        better: Better::Zero,
    };
    let sample: Sample = vec![
        (
            Metric {
                key: "cycles_per_s",
                label: "cycles/s",
                unit: "cyc/s",
                better: Better::Higher,
            },
            n as f64 / secs,
        ),
        (zero("failed", "failed cycles"), failed as f64),
        (
            zero("leaked_children", "leaked children"),
            (kids.len() - zombies) as f64,
        ),
        (zero("zombies", "zombies"), zombies as f64),
        (
            zero("fd_growth", "fd growth"),
            procfs::fds(t.pid)? as f64 - fds0 as f64,
        ),
        (
            zero("thread_growth", "thread growth"),
            procfs::threads(t.pid)? as f64 - threads0 as f64,
        ),
        (
            Metric {
                key: "rss_growth_kib",
                label: "RSS growth, settled",
                unit: "KiB",
                better: Better::Lower,
            },
            procfs::rss_kib(t.pid)? as f64 - rss0 as f64,
        ),
        (
            Metric {
                key: "rss_growth_first_half_kib",
                label: "RSS growth in the 1st half",
                unit: "KiB",
                better: Better::Lower,
            },
            rss_half as f64 - rss0 as f64,
        ),
        (
            Metric {
                key: "rss_growth_second_half_kib",
                label: "RSS growth in the 2nd half",
                unit: "KiB",
                better: Better::Lower,
            },
            rss_end as f64 - rss_half as f64,
        ),
    ];
    Ok(record("soak", &format!("{n} cycles"), &t.name, &[sample]))
}
