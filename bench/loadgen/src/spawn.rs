//! The raw cost of starting a trivial program with three pipes in its own process group, as a
//! server does for each connection, with no server around it: the floor under churn.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::procfs;
use crate::slices::{percentile, Better, Metric, Sample};

pub async fn slice(len: Duration, program: &[String]) -> Result<Sample> {
    let me = std::process::id();
    let cpu0 = procfs::cpu_micros(me)?;
    let start = Instant::now();
    let mut latencies = Vec::new();
    while start.elapsed() < len {
        let t0 = Instant::now();
        let mut child = Command::new(&program[0])
            .args(&program[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", program[0]))?;
        drop(child.stdin.take());
        let mut out = Vec::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_end(&mut out)?;
        }
        child.wait()?;
        latencies.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = procfs::cpu_micros(me)? - cpu0;
    let n = latencies.len() as f64;
    latencies.sort_by(f64::total_cmp);
    Ok(vec![
        (
            Metric {
                key: "spawns_per_s",
                label: "spawns/s (one at a time)",
                unit: "spawn/s",
                better: Better::Higher,
            },
            n / secs,
        ),
        (
            Metric {
                key: "spawn_p50_ms",
                label: "spawn->output->exit p50",
                unit: "ms",
                better: Better::Lower,
            },
            percentile(&latencies, 0.5),
        ),
        (
            Metric {
                key: "spawn_p99_ms",
                label: "spawn->output->exit p99",
                unit: "ms",
                better: Better::Lower,
            },
            percentile(&latencies, 0.99),
        ),
        (
            Metric {
                key: "parent_cpu_us_per_spawn",
                label: "parent's own CPU/spawn",
                unit: "us",
                better: Better::Lower,
            },
            cpu / n,
        ),
    ])
}
