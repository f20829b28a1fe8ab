//! Load generator for `scripts/bench.sh`: drives wsd, websocketd and websocat side by side,
//! taking turns in short slices, and serves the in-process "ceiling" they are measured
//! against. Results are appended as JSON lines; `report` turns them into tables.
//!
//! This is a separate workspace member: wsd does not depend on it.

mod client;
mod fanout;
mod idle;
mod load;
mod procfs;
mod report;
mod serve;
mod slices;
mod soak;
mod spawn;
mod target;
mod tick;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use slices::{take_turns, Plan};
use target::Target;

#[derive(Parser)]
#[command(about = "wsd's benchmark load generator (run by scripts/bench.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Copy)]
struct Turns {
    /// Measured rounds; each gives every server one slice.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Length of one slice, ms.
    #[arg(long, default_value_t = 1000)]
    slice_ms: u64,
    /// Pause after each slice, ms.
    #[arg(long, default_value_t = 150)]
    pause_ms: u64,
}

impl Turns {
    fn plan(self) -> Plan {
        Plan {
            rounds: self.rounds,
            slice: Duration::from_millis(self.slice_ms),
            pause: Duration::from_millis(self.pause_ms),
        }
    }
}

#[derive(Args)]
struct Targets {
    /// A server under test as NAME:PORT:PID (repeat for each).
    #[arg(long = "target", required = true)]
    targets: Vec<Target>,
    /// File the JSON records are appended to.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the in-process ceiling on 127.0.0.1:PORT until killed.
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum)]
        mode: serve::Mode,
        /// The line sent by `one` and `flood`.
        #[arg(long, default_value = "hi")]
        line: String,
        /// `broadcast`: a burst of stamped lines every this many microseconds.
        #[arg(long, default_value_t = 10_000)]
        interval_us: u64,
        /// `broadcast`: lines per burst.
        #[arg(long, default_value_t = 1)]
        burst: usize,
    },
    /// The broadcast scenario's program: prints BURST timestamped lines every INTERVAL_US.
    Tick {
        #[arg(long)]
        interval_us: u64,
        #[arg(long, default_value_t = 1)]
        burst: usize,
        /// Length of each line without its newline.
        #[arg(long, default_value_t = 63)]
        line: usize,
        /// Stop after this many seconds at the latest.
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
    /// Many clients of one feed: delivered messages/s, fan-out latency, clients kicked.
    Broadcast {
        #[command(flatten)]
        t: Targets,
        #[command(flatten)]
        turns: Turns,
        #[arg(long)]
        clients: usize,
        /// The program's rate, for the case name: a burst every this many microseconds.
        #[arg(long)]
        interval_us: u64,
        #[arg(long, default_value_t = 1)]
        burst: usize,
    },
    /// Connections per second and time to the first message, opening and closing.
    Churn {
        #[command(flatten)]
        t: Targets,
        #[command(flatten)]
        turns: Turns,
        #[arg(long)]
        concurrency: usize,
    },
    /// Round-trip latency with one message in flight per client.
    Echo {
        #[command(flatten)]
        t: Targets,
        #[command(flatten)]
        turns: Turns,
        #[arg(long)]
        clients: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Throughput of messages sent without waiting and counted back.
    Pipeline {
        #[command(flatten)]
        t: Targets,
        #[command(flatten)]
        turns: Turns,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        size: usize,
        /// Most bytes each client has sent and not yet received back.
        #[arg(long, default_value_t = 32 * 1024)]
        window: usize,
    },
    /// Server-to-client messages per second from a program printing as fast as it can.
    Flood {
        #[command(flatten)]
        t: Targets,
        #[command(flatten)]
        turns: Turns,
        #[arg(long)]
        clients: usize,
        /// Length of the program's lines without the newline: each message should be one.
        #[arg(long)]
        line: usize,
    },
    /// Memory of N idle connections; one server per run.
    Idle {
        #[command(flatten)]
        t: Targets,
        #[arg(long)]
        conns: usize,
        /// Case name in the tables (e.g. "1000 connections").
        #[arg(long)]
        case: String,
        /// Wait this long with every connection open before reading memory, ms.
        #[arg(long, default_value_t = 2000)]
        settle_ms: u64,
    },
    /// Connect/echo/disconnect cycles, then leaked children, zombies, fds, threads, RSS.
    Soak {
        #[command(flatten)]
        t: Targets,
        #[arg(long)]
        cycles: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// The raw cost of spawning a program with pipes, one at a time, with no server.
    Spawn {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        turns: Turns,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true)]
        program: Vec<String>,
    },
    /// Print tables from the results file: with no options, every scenario and the targets.
    Report {
        #[arg(long)]
        results: PathBuf,
        /// Print this scenario's tables.
        #[arg(long)]
        scenario: Option<String>,
        /// Print the targets.
        #[arg(long)]
        summary: bool,
        /// Also write everything, with the target summary, to this JSON file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// KEY=VALUE pairs recorded under "meta" in the JSON file.
        #[arg(long)]
        meta: Vec<String>,
    },
}

fn append(out: &Path, records: &[Value]) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("cannot open {}", out.display()))?;
    for r in records {
        writeln!(f, "{r}")?;
    }
    Ok(())
}

fn read_records(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("malformed results line"))
        .collect()
}

fn report(
    results: &Path,
    scenario: Option<&str>,
    summary: bool,
    json: Option<&Path>,
    meta: &[String],
) -> Result<()> {
    let records = read_records(results)?;
    let everything = scenario.is_none() && !summary && json.is_none();
    let chosen: Vec<Value> = records
        .iter()
        .filter(|r| everything || scenario.is_some_and(|s| r["scenario"] == s))
        .cloned()
        .collect();
    for g in report::groups(&chosen) {
        print!("{}", report::table(&g));
    }
    let (text, summary_rows) = report::summary(&records);
    if everything || summary {
        print!("{text}");
    }
    if let Some(path) = json {
        let meta: serde_json::Map<String, Value> = meta
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        let doc = serde_json::json!({
            "meta": meta,
            "note": "ratios are wsd's advantage: above 1 means wsd is better",
            "summary": summary_rows,
            "records": records,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn measure(command: Command) -> Result<()> {
    match command {
        Command::Churn {
            t,
            turns,
            concurrency,
        } => {
            let case = format!("concurrency {concurrency}");
            let r = take_turns("churn", &case, &t.targets, turns.plan(), |tg, len| {
                load::churn(tg, len, concurrency)
            })
            .await;
            append(&t.out, &r)
        }
        Command::Echo {
            t,
            turns,
            clients,
            size,
        } => {
            let case = format!("{clients} client{}", if clients == 1 { "" } else { "s" });
            let r = take_turns("echo", &case, &t.targets, turns.plan(), |tg, len| {
                load::echo(tg, len, clients, size)
            })
            .await;
            append(&t.out, &r)
        }
        Command::Pipeline {
            t,
            turns,
            clients,
            size,
            window,
        } => {
            let case = format!(
                "{size} B messages, {clients} clients, {} KiB window",
                window / 1024
            );
            let r = take_turns("pipeline", &case, &t.targets, turns.plan(), |tg, len| {
                load::pipeline(tg, len, clients, size, window)
            })
            .await;
            append(&t.out, &r)
        }
        Command::Flood {
            t,
            turns,
            clients,
            line,
        } => {
            let case = format!("{clients} client{}", if clients == 1 { "" } else { "s" });
            let r = take_turns("flood", &case, &t.targets, turns.plan(), |tg, len| {
                load::flood(tg, len, clients, line)
            })
            .await;
            append(&t.out, &r)
        }
        Command::Broadcast {
            t,
            turns,
            clients,
            interval_us,
            burst,
        } => {
            let per_client = burst as f64 * 1e6 / interval_us.max(1) as f64;
            let case = format!(
                "{clients} clients, {per_client:.0} lines/s each ({:.0} msg/s offered)",
                per_client * clients as f64
            );
            let r = take_turns("broadcast", &case, &t.targets, turns.plan(), |tg, len| {
                fanout::run(tg, len, clients)
            })
            .await;
            append(&t.out, &r)
        }
        Command::Idle {
            t,
            conns,
            case,
            settle_ms,
        } => {
            for tg in &t.targets {
                let r = idle::run(tg, conns, &case, Duration::from_millis(settle_ms)).await?;
                append(&t.out, &[r])?;
            }
            Ok(())
        }
        Command::Soak {
            t,
            cycles,
            concurrency,
        } => {
            for tg in &t.targets {
                let r = soak::run(tg, cycles, concurrency).await?;
                append(&t.out, &[r])?;
            }
            Ok(())
        }
        Command::Spawn {
            out,
            turns,
            program,
        } => {
            let me = Target {
                name: "raw spawn".into(),
                port: 0,
                pid: std::process::id(),
            };
            let case = program.join(" ");
            let r = take_turns("spawn", &case, &[me], turns.plan(), |_, len| {
                let program = program.clone();
                async move { spawn::slice(len, &program).await }
            })
            .await;
            append(&out, &r)
        }
        Command::Serve { .. } | Command::Report { .. } | Command::Tick { .. } => {
            unreachable!("handled in main")
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Report {
            results,
            scenario,
            summary,
            json,
            meta,
        } => report(
            &results,
            scenario.as_deref(),
            summary,
            json.as_deref(),
            &meta,
        ),
        // Like the servers it stands in for: a multi-threaded runtime, one worker per core it
        // is allowed (bench.sh pins it to the servers' core).
        Command::Serve {
            port,
            mode,
            line,
            interval_us,
            burst,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve::run(
                port,
                mode,
                line,
                Duration::from_micros(interval_us),
                burst,
            )),
        Command::Tick {
            interval_us,
            burst,
            line,
            max_secs,
        } => {
            tick::run(
                Duration::from_micros(interval_us),
                burst,
                line,
                Duration::from_secs(max_secs),
            );
            Ok(())
        }
        // The client side runs on one thread on a core of its own.
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(measure(command)),
    }
}
