//! The broadcast scenario's program: prints `burst` timestamped lines every `interval`, so
//! that the time from the program's write to a client's receipt (the fan-out latency) can be
//! read off each message. Every server runs the same program: wsd `--broadcast` once for
//! all clients, websocketd once per client; the ceiling makes the same lines in process.
//!
//! A line is `NANOS SEQ` padded with dots to a fixed length, NANOS being CLOCK_REALTIME in
//! nanoseconds when the line was made (the load generator runs on the same machine clock).

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch, CLOCK_REALTIME.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One line of `len` bytes without its newline (longer if the stamp needs more room).
pub fn line(seq: u64, len: usize) -> String {
    let mut s = format!("{} {seq}", now_nanos());
    while s.len() < len {
        s.push('.');
    }
    s
}

/// The latency of a received line in microseconds: now minus its stamp (`None` if the
/// message is not a stamped line).
pub fn latency_us(text: &str) -> Option<f64> {
    let stamp: u64 = text.split(' ').next()?.parse().ok()?;
    Some(now_nanos().saturating_sub(stamp) as f64 / 1e3)
}

/// Runs the program: prints until stdout is closed (the server hung up: EPIPE, as Rust
/// ignores SIGPIPE) or `max` has passed, a bound so that nothing the benchmark starts can
/// outlive it for long.
///
/// Ticks fall on multiples of `interval` of the real-time clock, so that every copy of the
/// program (websocketd runs one per client) prints at the same moment, as one shared program
/// does for all its clients: each server then has the same burst of messages to deliver at
/// once. A tick that comes late is not made up for with a burst.
pub fn run(interval: Duration, burst: usize, len: usize, max: Duration) {
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let mut seq = 0u64;
    let mut buf = String::new();
    let every = (interval.as_nanos() as u64).max(1);
    let until_next_tick = || {
        let now = now_nanos();
        Duration::from_nanos((now / every + 1) * every - now)
    };
    std::thread::sleep(until_next_tick());
    while started.elapsed() < max {
        buf.clear();
        for _ in 0..burst {
            seq += 1;
            buf.push_str(&line(seq, len));
            buf.push('\n');
        }
        // stdout is line buffered: one write for the whole burst.
        if stdout.write_all(buf.as_bytes()).is_err() || stdout.flush().is_err() {
            return;
        }
        std::thread::sleep(until_next_tick());
    }
}
