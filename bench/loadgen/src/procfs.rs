//! What the benchmark reads about a server process from /proc: its own CPU time, memory,
//! threads and file descriptors, and its descendants (the programs it started).
//!
//! "Own" always means the process itself, all its threads, never its children: utime+stime,
//! not cutime/cstime, and VmRSS of the process alone. Children are measured separately.

use std::collections::HashMap;
use std::fs;

use anyhow::{Context, Result};

/// Fields of /proc/PID/stat after the `(comm)` field, which may contain spaces.
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// The process's own user+system CPU time in microseconds (children excluded).
pub fn cpu_micros(pid: u32) -> Result<f64> {
    let f = stat_fields(pid)?;
    // Field 14 is utime and 15 stime; index 0 here is field 3 (state).
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 * 1e6 / hz)
}

/// The CPU time of all the process's threads in microseconds, to the nanosecond (schedstat's
/// time on CPU), for processes too light for `cpu_micros`'s clock ticks.
pub fn cpu_micros_precise(pid: u32) -> Result<f64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("process {pid} is gone"))?;
    let mut ns = 0u64;
    for t in tasks.flatten() {
        let Ok(text) = fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1e3)
}

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Resident set size of the process itself, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// Number of threads of the process.
pub fn threads(pid: u32) -> Result<u64> {
    status_kib(pid, "Threads:")
}

/// Number of open file descriptors of the process.
pub fn fds(pid: u32) -> Result<u64> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list fds of {pid}"))?
        .count() as u64)
}

/// Proportional set size, KiB: shared pages (the program's text, libc) divided among sharers.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A descendant of a server: its pid and its state letter (`Z` for a zombie).
#[derive(Debug, Clone, Copy)]
pub struct Descendant {
    pub pid: u32,
    pub state: char,
}

/// Every live descendant of `root` (children, grandchildren, ...), found by walking the parent
/// links of all processes.
pub fn descendants(root: u32) -> Vec<Descendant> {
    let mut children: HashMap<u32, Vec<Descendant>> = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(f) = stat_fields(pid) else { continue };
        let (Some(state), Some(ppid)) = (
            f.first().and_then(|s| s.chars().next()),
            f.get(1).and_then(|s| s.parse::<u32>().ok()),
        ) else {
            continue;
        };
        children
            .entry(ppid)
            .or_default()
            .push(Descendant { pid, state });
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for d in children.remove(&p).unwrap_or_default() {
            stack.push(d.pid);
            out.push(d);
        }
    }
    out
}
