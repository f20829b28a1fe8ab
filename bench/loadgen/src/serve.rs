//! The ceiling: an in-process WebSocket server with no child process, doing in memory what the
//! bridges do through a program (answer with one line, echo, flood). Its figures are the most
//! this machine and this load generator allow, so each server's can be read as a fraction.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::ValueEnum;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// What the ceiling server does with each connection.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Send one line, then close (churn).
    One,
    /// Send every message back (echo, pipeline, idle, soak).
    Echo,
    /// Send the line over and over (flood).
    Flood,
    /// Send every client the same stamped lines at a fixed rate (broadcast), through a
    /// bounded queue per client; one that falls behind is closed with 1013, as wsd does.
    Broadcast,
}

/// The buffer sizes wsd gives tungstenite (its defaults, 128 KiB each, would make the ceiling's
/// idle connections heavier than wsd's).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(64 * 1024)
}

/// Messages fed between flushes when flooding.
const FLOOD_BATCH: usize = 32;
/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Lines queued per broadcast client (wsd's default `--send-queue`).
const SEND_QUEUE: usize = 1024;
/// Most queued broadcast lines sent with one flush (as wsd).
const FEED_BATCH: usize = 64;

pub async fn run(
    port: u16,
    mode: Mode,
    line: String,
    interval: Duration,
    burst: usize,
) -> Result<()> {
    let (feed, _) = broadcast::channel::<Message>(SEND_QUEUE);
    if let Mode::Broadcast = mode {
        tokio::spawn(tick(feed.clone(), interval, burst));
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                // Out of file descriptors, say: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let line = line.clone();
        let feed = feed.subscribe();
        tokio::spawn(async move {
            let _ = serve_one(tcp, mode, line, feed).await;
        });
    }
}

/// The in-process program of `broadcast`: the stamped lines of `tick`, at its rate; lines
/// are made only while someone listens.
async fn tick(feed: broadcast::Sender<Message>, interval: Duration, burst: usize) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        timer.tick().await;
        if feed.receiver_count() == 0 {
            continue;
        }
        for _ in 0..burst {
            seq += 1;
            let _ = feed.send(Message::text(crate::tick::line(seq, 63)));
        }
    }
}

async fn serve_one(
    tcp: TcpStream,
    mode: Mode,
    line: String,
    mut feed: broadcast::Receiver<Message>,
) -> Result<()> {
    tcp.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config())).await?;
    match mode {
        Mode::One => {
            ws.send(Message::text(line)).await?;
            ws.send(Message::Close(None)).await?;
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        Mode::Echo => {
            // Feed every message already received, then flush once: as a bridge writes what
            // its program printed in one read.
            while let Some(m) = ws.next().await {
                let mut m = m?;
                loop {
                    if m.is_text() || m.is_binary() {
                        ws.feed(m).await?;
                    }
                    match ws.next().now_or_never() {
                        Some(Some(next)) => m = next?,
                        _ => break,
                    }
                }
                ws.flush().await?;
            }
        }
        Mode::Broadcast => {
            let (mut sink, mut stream) = ws.split();
            let reader = async { while let Some(Ok(_)) = stream.next().await {} };
            let writer = async {
                loop {
                    let first = match feed.recv().await {
                        Ok(m) => m,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let close = CloseFrame {
                                code: CloseCode::Again,
                                reason: "too slow".into(),
                            };
                            let _ = sink.send(Message::Close(Some(close))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if sink.feed(first).await.is_err() {
                        return;
                    }
                    for _ in 1..FEED_BATCH {
                        match feed.try_recv() {
                            Ok(m) => {
                                if sink.feed(m).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = reader => {}
                _ = writer => {}
            }
        }
        Mode::Flood => {
            let msg = Message::text(line);
            loop {
                for _ in 0..FLOOD_BATCH {
                    ws.feed(msg.clone()).await?;
                }
                ws.flush().await?;
            }
        }
    }
    Ok(())
}
