//! Idle memory: many open connections to `cat` that do nothing, and what they cost the server
//! itself (its RSS growth per connection) and in programs (the children's memory).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::stream::{self, StreamExt};

use crate::client::{self, Ws};
use crate::procfs;
use crate::slices::{record, Better, Metric, Sample};
use crate::target::Target;

/// Connections opened at once while filling up.
const OPEN_PARALLEL: usize = 32;
/// How long the server may take to end every program after the clients leave.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Opens up to `n` idle connections (fewer if the server or the machine refuses more), reads
/// the server's memory and its children's, closes everything and waits for the children to
/// go. Returns the record for this target.
///
/// `settle` is the wait before memory is read, for the server to settle (a garbage collector to
/// run).
pub async fn run(t: &Target, n: usize, case: &str, settle: Duration) -> Result<serde_json::Value> {
    let rss0 = procfs::rss_kib(t.pid)?;
    let fds0 = procfs::fds(t.pid)?;
    let started = Instant::now();
    let mut conns: Vec<Ws> = Vec::with_capacity(n);
    let mut first_error = None;
    let mut opening = stream::iter(0..n)
        .map(|_| async {
            let mut ws = client::connect(t.port).await?;
            client::round_trip(&mut ws, "idle").await?;
            Ok::<_, anyhow::Error>(ws)
        })
        .buffer_unordered(OPEN_PARALLEL);
    while let Some(r) = opening.next().await {
        match r {
            Ok(ws) => conns.push(ws),
            Err(e) => {
                // The limit is reached: keep what is open, open no more.
                first_error.get_or_insert(e);
                break;
            }
        }
    }
    drop(opening);
    let open_secs = started.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        eprintln!(
            "  idle: {}: stopped at {} of {n} connections: {e:#}",
            t.name,
            conns.len()
        );
    }
    if conns.is_empty() {
        bail!("no connection could be opened");
    }
    tokio::time::sleep(settle).await;
    let k = conns.len() as f64;
    let rss = procfs::rss_kib(t.pid)?;
    let fds = procfs::fds(t.pid)?;
    let kids = procfs::descendants(t.pid);
    let (mut kids_rss, mut kids_pss) = (0u64, 0u64);
    for d in &kids {
        kids_rss += procfs::rss_kib(d.pid).unwrap_or(0);
        kids_pss += procfs::pss_kib(d.pid).unwrap_or(0);
    }
    let sample: Sample = vec![
        (
            Metric {
                key: "conns",
                label: "connections held",
                unit: "",
                better: Better::Higher,
            },
            k,
        ),
        (
            Metric {
                key: "server_rss_kib_per_conn",
                label: "server's own RSS/conn",
                unit: "KiB",
                better: Better::Lower,
            },
            (rss as f64 - rss0 as f64) / k,
        ),
        (
            Metric {
                key: "server_rss_mib",
                label: "server's own RSS total",
                unit: "MiB",
                better: Better::Lower,
            },
            rss as f64 / 1024.0,
        ),
        (
            Metric {
                key: "server_fds_per_conn",
                label: "server's fds/conn",
                unit: "",
                better: Better::Lower,
            },
            (fds as f64 - fds0 as f64) / k,
        ),
        (
            Metric {
                key: "children_per_conn",
                label: "child processes/conn",
                unit: "",
                better: Better::Lower,
            },
            kids.len() as f64 / k,
        ),
        (
            Metric {
                key: "children_pss_kib_per_conn",
                label: "children's PSS/conn",
                unit: "KiB",
                better: Better::Lower,
            },
            kids_pss as f64 / k,
        ),
        (
            Metric {
                key: "children_rss_kib_per_conn",
                label: "children's RSS/conn",
                unit: "KiB",
                better: Better::Lower,
            },
            kids_rss as f64 / k,
        ),
        (
            Metric {
                key: "open_per_s",
                label: "opened/s (fill-up)",
                unit: "conn/s",
                better: Better::Higher,
            },
            k / open_secs,
        ),
    ];
    // Leave by dropping the sockets (FIN), then wait until the server has ended every program,
    // so that the next server starts on a clean machine.
    drop(conns);
    let deadline = Instant::now() + DRAIN_LIMIT;
    while !procfs::descendants(t.pid).is_empty() {
        if Instant::now() > deadline {
            eprintln!(
                "  idle: {}: children still running {}s after the clients left",
                t.name,
                DRAIN_LIMIT.as_secs()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(record("idle", case, &t.name, &[sample]))
}
