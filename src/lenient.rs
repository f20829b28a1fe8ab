//! Leniency for the first request line of a connection.
//!
//! Browsers and Go's server pass characters such as `"`, `<`, `>`, `{`, `|` and non-ASCII
//! bytes through in a request target; hyper (through `http::Uri`) refuses them with 400. So
//! that such a request gets a real answer (the dev console must show the URL, escaped, rather
//! than drop the connection), the first request line of each connection has those bytes
//! percent-encoded on the way in. Everything after that line passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Method,
    Target,
    Done,
}

/// A stream whose first request target is made acceptable to hyper.
pub struct LenientTarget<S> {
    inner: S,
    state: State,
    /// Rewritten bytes not yet handed to the reader.
    pending: Vec<u8>,
    pending_at: usize,
}

impl<S> LenientTarget<S> {
    pub fn new(inner: S) -> LenientTarget<S> {
        LenientTarget {
            inner,
            state: State::Method,
            pending: Vec::new(),
            pending_at: 0,
        }
    }

    fn rewrite(&mut self, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match self.state {
                State::Method => {
                    self.pending.push(b);
                    if b == b' ' {
                        self.state = State::Target;
                    }
                }
                State::Target if matches!(b, b' ' | b'\r' | b'\n') => {
                    self.state = State::Done;
                    self.pending.extend_from_slice(&data[i..]);
                    return;
                }
                State::Target if needs_escape(b) => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    self.pending.extend_from_slice(&[
                        b'%',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]);
                }
                State::Target => self.pending.push(b),
                State::Done => {
                    self.pending.extend_from_slice(&data[i..]);
                    return;
                }
            }
        }
    }
}

/// Undoes the encoding for display: the escapes of the characters this module encodes
/// become those characters again (a client's own `%3C` too, which is as harmless, since what
/// is shown is HTML-escaped).
pub fn restore(target: &str) -> String {
    crate::cgi_env::percent_decode_where(target, needs_escape)
}

fn needs_escape(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
    ) || b >= 0x80
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientTarget<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pending_at < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.pending_at);
                buf.put_slice(&this.pending[this.pending_at..this.pending_at + n]);
                this.pending_at += n;
                if this.pending_at == this.pending.len() {
                    this.pending = Vec::new();
                    this.pending_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Done {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut tmp = [0u8; 2048];
            let mut read = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            let data = read.filled().to_vec();
            this.rewrite(&data);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientTarget<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(chunks: &[&[u8]]) -> Vec<u8> {
        let mut l = LenientTarget::new(());
        for c in chunks {
            l.rewrite(c);
        }
        l.pending
    }

    #[test]
    fn only_the_first_target_is_encoded() {
        assert_eq!(
            rewritten(&[b"GET /\"><x> HTTP/1.1\r\nX: <y>\r\n\r\n"]),
            b"GET /%22%3E%3Cx%3E HTTP/1.1\r\nX: <y>\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn the_line_may_arrive_in_pieces() {
        assert_eq!(
            rewritten(&[b"GE", b"T /a|", b"b HTTP/1.1\r\n"]),
            b"GET /a%7Cb HTTP/1.1\r\n".to_vec()
        );
    }

    #[test]
    fn restore_undoes_exactly_that_encoding() {
        assert_eq!(restore("/%22%3E%3Cx%3E%20%2F"), "/\"><x>%20%2F");
    }

    #[test]
    fn a_plain_request_is_unchanged() {
        let req = b"GET /chat?room=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(rewritten(&[req]), req.to_vec());
    }
}
