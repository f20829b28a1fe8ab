//! One slice of each timed scenario against one server: churn, echo latency, pipeline
//! throughput and flood. Each returns the slice's figures; `slices` decides the turns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::future::try_join_all;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::procfs;
use crate::slices::{percentile, Better, Metric, Sample};
use crate::target::Target;

/// Connections that were opening or closing when a slice ended are finished off before the
/// server's CPU time is read again, so it covers their whole cost.
const CPU_SETTLE: Duration = Duration::from_millis(100);
/// Messages fed to the socket between flushes when sending without waiting.
const SEND_BATCH: usize = 32;
/// Measuring starts this long after a streaming slice starts, once the pipes are full.
const STREAM_WARMUP: Duration = Duration::from_millis(200);

const FAILED: Metric = Metric {
    key: "failed",
    label: "failed connections",
    unit: "",
    better: Better::Zero,
};

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Opens `n` connections, each checked with one round trip through the program, at most
/// `parallel` at a time.
async fn open_echo_clients(port: u16, n: usize, parallel: usize) -> Result<Vec<Ws>> {
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(parallel);
        out.extend(
            try_join_all((0..batch).map(|_| async {
                let mut ws = client::connect(port).await?;
                client::round_trip(&mut ws, "warm").await?;
                Ok::<_, anyhow::Error>(ws)
            }))
            .await?,
        );
        left -= batch;
    }
    Ok(out)
}

/// Closes every connection with a close frame, waiting for the server's side.
async fn close_all(clients: Vec<Ws>) {
    futures_util::future::join_all(clients.into_iter().map(client::close_cleanly)).await;
}

/// Churn: `concurrency` workers each open a connection, wait for the program's one line,
/// close, and start over, until the slice ends.
pub async fn churn(t: Target, len: Duration, concurrency: usize) -> Result<Sample> {
    let cpu0 = procfs::cpu_micros(t.pid)?;
    let start = Instant::now();
    let deadline = start + len;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut cycles = Vec::new();
            let mut failed = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let one = async {
                    let mut ws = client::connect(t.port).await?;
                    client::next_data(&mut ws).await?;
                    let first = t0.elapsed();
                    client::close_cleanly(ws).await;
                    Ok::<_, anyhow::Error>((first, t0.elapsed()))
                };
                match one.await {
                    Ok((first, all)) => {
                        latencies.push(micros(first));
                        cycles.push(micros(all));
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (latencies, cycles, failed, first_error)
        });
    }
    let mut latencies = Vec::new();
    let mut cycles = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    while let Some(r) = workers.join_next().await {
        let (l, c, f, e) = r.context("churn worker panicked")?;
        latencies.extend(l);
        cycles.extend(c);
        failed += f;
        first_error = first_error.or(e);
    }
    let elapsed = start.elapsed();
    tokio::time::sleep(CPU_SETTLE).await;
    let cpu = procfs::cpu_micros(t.pid)? - cpu0;
    if let Some(e) = &first_error {
        eprintln!(
            "  churn: {}: {failed} connections failed, first: {e:#}",
            t.name
        );
    }
    if latencies.is_empty() {
        bail!("no connection completed");
    }
    let n = latencies.len() as f64;
    latencies.sort_by(f64::total_cmp);
    cycles.sort_by(f64::total_cmp);
    Ok(vec![
        (
            Metric {
                key: "conn_per_s",
                label: "connections/s",
                unit: "conn/s",
                better: Better::Higher,
            },
            n / elapsed.as_secs_f64(),
        ),
        (
            Metric {
                key: "first_msg_p50_ms",
                label: "connect->first msg p50",
                unit: "ms",
                better: Better::Lower,
            },
            percentile(&latencies, 0.50) / 1e3,
        ),
        (
            Metric {
                key: "first_msg_p99_ms",
                label: "connect->first msg p99",
                unit: "ms",
                better: Better::Lower,
            },
            percentile(&latencies, 0.99) / 1e3,
        ),
        (
            Metric {
                key: "cycle_p50_ms",
                label: "connect->closed p50",
                unit: "ms",
                better: Better::Lower,
            },
            percentile(&cycles, 0.50) / 1e3,
        ),
        (
            Metric {
                key: "cycle_p99_ms",
                label: "connect->closed p99",
                unit: "ms",
                better: Better::Lower,
            },
            percentile(&cycles, 0.99) / 1e3,
        ),
        (
            Metric {
                key: "server_cpu_us_per_conn",
                label: "server's own CPU/conn",
                unit: "us",
                better: Better::Lower,
            },
            cpu / n,
        ),
        (FAILED, failed as f64),
    ])
}

/// Echo latency: `clients` persistent connections to `cat`, each with one message in flight.
pub async fn echo(t: Target, len: Duration, clients: usize, size: usize) -> Result<Sample> {
    let conns = open_echo_clients(t.port, clients, 32).await?;
    let text = client::payload(size);
    let cpu0 = procfs::cpu_micros(t.pid)?;
    let start = Instant::now();
    let deadline = start + len;
    let mut tasks = JoinSet::new();
    for mut ws in conns {
        let text = text.clone();
        tasks.spawn(async move {
            let mut rtts = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                client::round_trip(&mut ws, &text).await?;
                rtts.push(micros(t0.elapsed()));
            }
            Ok::<_, anyhow::Error>((rtts, ws))
        });
    }
    let mut rtts = Vec::new();
    let mut back = Vec::new();
    let mut error = None;
    while let Some(r) = tasks.join_next().await {
        match r.context("echo client panicked")? {
            Ok((r, ws)) => {
                rtts.extend(r);
                back.push(ws);
            }
            Err(e) => error = Some(e),
        }
    }
    let elapsed = start.elapsed();
    let cpu = procfs::cpu_micros(t.pid)? - cpu0;
    close_all(back).await;
    if let Some(e) = error {
        return Err(e.context("an echo client failed"));
    }
    let n = rtts.len() as f64;
    rtts.sort_by(f64::total_cmp);
    Ok(vec![
        (
            Metric {
                key: "rtt_p50_us",
                label: "round trip p50",
                unit: "us",
                better: Better::Lower,
            },
            percentile(&rtts, 0.50),
        ),
        (
            Metric {
                key: "rtt_p99_us",
                label: "round trip p99",
                unit: "us",
                better: Better::Lower,
            },
            percentile(&rtts, 0.99),
        ),
        (
            Metric {
                key: "msgs_per_s",
                label: "round trips/s",
                unit: "msg/s",
                better: Better::Higher,
            },
            n / elapsed.as_secs_f64(),
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
    ])
}

/// Counts the data messages of the size sent and all payload bytes as they arrive, and
/// separately the messages of another size (a line split in two, an empty message), which a
/// bridge should not send.
struct Counter {
    expected: usize,
    msgs: AtomicU64,
    bytes: AtomicU64,
    odd: AtomicU64,
}

impl Counter {
    fn new(expected: usize) -> Counter {
        Counter {
            expected,
            msgs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            odd: AtomicU64::new(0),
        }
    }

    fn read(&self) -> (u64, u64, u64) {
        (
            self.msgs.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.odd.load(Ordering::Relaxed),
        )
    }
}

fn count_into(
    tasks: &mut JoinSet<()>,
    mut stream: impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin
        + Send
        + 'static,
    counter: Arc<Counter>,
    credit: Option<Arc<Semaphore>>,
) {
    tasks.spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let len = match &m {
                Message::Text(t) => t.len(),
                Message::Binary(b) => b.len(),
                _ => continue,
            };
            counter.bytes.fetch_add(len as u64, Ordering::Relaxed);
            if len == counter.expected {
                counter.msgs.fetch_add(1, Ordering::Relaxed);
            } else {
                counter.odd.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(c) = &credit {
                c.add_permits(1);
            }
        }
    });
}

/// Measures the receive rate over `len` after the warm-up, with the server's CPU over the same
/// window, then drops every connection.
async fn measure_stream(
    t: &Target,
    len: Duration,
    counter: &Counter,
    mut tasks: JoinSet<()>,
) -> Result<Sample> {
    tokio::time::sleep(STREAM_WARMUP).await;
    let (m0, b0, o0) = counter.read();
    let cpu0 = procfs::cpu_micros(t.pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(len).await;
    let (m1, b1, o1) = counter.read();
    let secs = t0.elapsed().as_secs_f64();
    let cpu = procfs::cpu_micros(t.pid)? - cpu0;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let msgs = (m1 - m0) as f64;
    let odd = (o1 - o0) as f64;
    if msgs == 0.0 {
        bail!("no message of the size sent arrived in the measured window");
    }
    Ok(vec![
        (
            Metric {
                key: "msgs_per_s",
                label: "messages/s (of the size sent)",
                unit: "msg/s",
                better: Better::Higher,
            },
            msgs / secs,
        ),
        (
            Metric {
                key: "mb_per_s",
                label: "payload MB/s",
                unit: "MB/s",
                better: Better::Higher,
            },
            (b1 - b0) as f64 / 1e6 / secs,
        ),
        (
            Metric {
                key: "server_cpu_us_per_msg",
                label: "server's own CPU/msg",
                unit: "us",
                better: Better::Lower,
            },
            cpu / msgs,
        ),
        (
            Metric {
                key: "odd_size_pct",
                label: "messages of another size",
                unit: "%",
                better: Better::Zero,
            },
            100.0 * odd / (msgs + odd),
        ),
    ])
}

/// Pipeline: each client sends `size`-byte messages without waiting for each answer, with at
/// most `window` bytes sent and not yet back, while counting what comes back through `cat`.
///
/// The window keeps the data in flight below a pipe's capacity: websocketd forwards both
/// directions from one goroutine, so once the program's stdin and stdout pipes are both full it
/// deadlocks, and unbounded sending would measure that rather than its throughput.
pub async fn pipeline(
    t: Target,
    len: Duration,
    clients: usize,
    size: usize,
    window: usize,
) -> Result<Sample> {
    let conns = open_echo_clients(t.port, clients, 32).await?;
    let msg = Message::text(client::payload(size));
    let counter = Arc::new(Counter::new(size));
    let mut tasks = JoinSet::new();
    for ws in conns {
        let (mut sink, stream) = ws.split();
        let credit = Arc::new(Semaphore::new((window / size.max(1)).max(1)));
        count_into(&mut tasks, stream, counter.clone(), Some(credit.clone()));
        let msg = msg.clone();
        // Runs until measure_stream aborts it.
        tasks.spawn(async move {
            let mut unflushed = 0;
            loop {
                if let Ok(p) = credit.try_acquire() {
                    p.forget();
                } else {
                    // Out of credit: send what is buffered, then wait for answers.
                    if sink.flush().await.is_err() {
                        return;
                    }
                    unflushed = 0;
                    match credit.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                }
                if sink.feed(msg.clone()).await.is_err() {
                    return;
                }
                unflushed += 1;
                if unflushed == SEND_BATCH {
                    if sink.flush().await.is_err() {
                        return;
                    }
                    unflushed = 0;
                }
            }
        });
    }
    measure_stream(&t, len, &counter, tasks).await
}

/// Flood: each client only counts what a program printing `line`-byte lines (without the
/// newline) as fast as it can sends.
/// Every client is connected before any starts reading, so that a server busy flooding the
/// first ones still gets to accept the others.
pub async fn flood(t: Target, len: Duration, clients: usize, line: usize) -> Result<Sample> {
    let conns = try_join_all((0..clients).map(|_| client::connect(t.port))).await?;
    let counter = Arc::new(Counter::new(line));
    let mut tasks = JoinSet::new();
    for ws in conns {
        count_into(&mut tasks, ws, counter.clone(), None);
    }
    measure_stream(&t, len, &counter, tasks).await
}
