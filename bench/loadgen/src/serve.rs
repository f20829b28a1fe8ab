//! The ceiling: an in-process WebSocket server with no child process, doing in memory what the
//! bridges do through a program (answer with one line, echo, flood). Its figures are the most
//! this machine and this load generator allow, so each server's can be read as a fraction.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::ValueEnum;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
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

pub async fn run(port: u16, mode: Mode, line: String) -> Result<()> {
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
        tokio::spawn(async move {
            let _ = serve_one(tcp, mode, line).await;
        });
    }
}

async fn serve_one(tcp: TcpStream, mode: Mode, line: String) -> Result<()> {
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
