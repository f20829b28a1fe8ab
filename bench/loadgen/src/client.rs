//! The client side of one WebSocket connection, as every scenario opens it.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// How long any single step of a connection may take before it counts as a failure.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP connect and WebSocket handshake to `ws://127.0.0.1:PORT/`.
pub async fn connect(port: u16) -> Result<Ws> {
    let step = async {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .context("connect")?;
        tcp.set_nodelay(true)?;
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/"), tcp)
            .await
            .context("handshake")?;
        Ok(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .context("connect and handshake timed out")?
}

/// The next data message (text or binary payload), skipping control frames.
pub async fn next_data(ws: &mut Ws) -> Result<Vec<u8>> {
    let step = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.as_bytes().to_vec()),
                Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
                Some(Ok(Message::Close(c))) => bail!("closed before a message: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("receive: {e}"),
                None => bail!("connection ended before a message"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .context("no message in time")?
}

/// Sends one text message and waits for it to come back unchanged.
pub async fn round_trip(ws: &mut Ws, text: &str) -> Result<()> {
    ws.send(Message::text(text)).await.context("send")?;
    let back = next_data(ws).await?;
    if back != text.as_bytes() {
        bail!(
            "echo mismatch: sent {} bytes, got {} bytes",
            text.len(),
            back.len()
        );
    }
    Ok(())
}

/// A clean close: our close frame, then read until the server ends the connection. Servers
/// that drop TCP without a close frame (websocketd) end it just as well.
pub async fn close_cleanly(mut ws: Ws) {
    let _ = ws.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A text payload of exactly `size` bytes with no newline in it.
pub fn payload(size: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..size)
        .map(|i| ALPHABET[i % ALPHABET.len()] as char)
        .collect()
}
