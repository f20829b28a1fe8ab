//! Splitting a child's output into messages, with bounded memory.
//!
//! Text mode: each line, without its `\n` (and a `\r` before it), is one message; a final line
//! without `\n` is delivered at end of file; a line longer than the limit is delivered in
//! pieces of the limit's size, split on a UTF-8 character boundary where possible. The caller
//! reads with [`LineSplitter::read_from`] and then takes the complete lines.
//!
//! Reads wait for the pipe to have data before taking a buffer, and a buffer holding no partial
//! line is let go: an idle connection holds no read buffer at all (two 64 KiB buffers, for
//! stdout and stderr, would be most of its memory).

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// How much to read from a pipe at once (the pipe's own capacity on Linux).
pub const READ_CHUNK: usize = 64 * 1024;

/// A program's stdout cut into message payloads: complete lines in text mode, the bytes of each
/// read in binary mode.
pub struct Output {
    source: pipe::Receiver,
    binary: bool,
    lines: LineSplitter,
    chunk: BytesMut,
    warned_split: bool,
}

impl Output {
    pub fn new(source: pipe::Receiver, binary: bool, max_line: usize) -> Output {
        Output {
            source,
            binary,
            lines: LineSplitter::new(max_line),
            chunk: BytesMut::new(),
            warned_split: false,
        }
    }

    /// Reads once: the payloads that read completed, and whether the output has ended.
    /// Cancel-safe: the only await is the wait for data.
    pub async fn read(&mut self) -> (Vec<Bytes>, bool) {
        let read = if self.binary {
            read_when_ready(&mut self.source, &mut self.chunk, READ_CHUNK).await
        } else {
            self.lines.read_from(&mut self.source).await
        };
        let n = read.unwrap_or_else(|e| {
            crate::error!(
                "process",
                "Unexpected error while reading STDOUT from process: {e}"
            );
            0
        });
        let payloads = if self.binary {
            // The whole buffer goes: the payload keeps what it needs until it is sent.
            let chunk = std::mem::take(&mut self.chunk);
            if n > 0 {
                vec![chunk.freeze()]
            } else {
                Vec::new()
            }
        } else {
            let lines = self.lines.take_lines(n == 0);
            if self.lines.split_happened && !self.warned_split {
                self.warned_split = true;
                crate::error!(
                    "process",
                    "a line longer than --max-line-bytes ({}) was sent in pieces",
                    self.lines.max_line
                );
            }
            lines
        };
        if n == 0 {
            crate::debug!("process", "Process STDOUT closed");
        }
        (payloads, n == 0)
    }
}

/// Waits until `source` has data or has ended, holding no buffer meanwhile, then makes room
/// for `room` bytes in `buf` (unless a quarter chunk is free) and reads once into it. 0 means
/// end of file. Cancel-safe: the only await is the wait.
///
/// The read goes through `AsyncRead`, which takes a read shorter than the room as proof that
/// the pipe is empty: the next call then waits for the pipe without first trying a read that
/// would fail with `EAGAIN`, one system call saved per burst of output.
async fn read_when_ready(
    source: &mut pipe::Receiver,
    buf: &mut BytesMut,
    room: usize,
) -> io::Result<usize> {
    loop {
        source.readable().await?;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(room);
        }
        match source.read_buf(buf).now_or_never() {
            Some(read) => return read,
            None => {
                // The readiness was left over from the last read: wait without the buffer.
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
            }
        }
    }
}

/// Accumulates output and cuts it into lines.
pub struct LineSplitter {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max_line: usize,
    /// Whether a line has been split for being too long (so that it is logged once).
    pub split_happened: bool,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> LineSplitter {
        LineSplitter {
            buf: BytesMut::new(),
            scanned: 0,
            max_line,
            split_happened: false,
        }
    }

    /// Reads once from `source` (see [`read_when_ready`]); 0 at end of file.
    pub async fn read_from(&mut self, source: &mut pipe::Receiver) -> io::Result<usize> {
        let room = self.room();
        read_when_ready(source, &mut self.buf, room).await
    }

    /// Room to make before each read: a chunk, never more than the line limit plus one (so the
    /// buffer stays under the line limit plus a chunk).
    fn room(&self) -> usize {
        READ_CHUNK.min(self.max_line + 1)
    }

    /// The buffer to read into, with room for a read.
    #[cfg(test)]
    pub fn buffer(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(self.room());
        }
        &mut self.buf
    }

    /// Takes the next complete line (or an over-long piece), without its line ending.
    pub fn next_line(&mut self) -> Option<Bytes> {
        // A line of exactly `max_line` bytes may still be followed by its newline.
        let window = self.buf.len().min(self.max_line + 1);
        if let Some(pos) = memchr(b'\n', &self.buf[self.scanned.min(window)..window]) {
            let end = self.scanned + pos;
            let mut line = self.buf.split_to(end + 1);
            self.scanned = 0;
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            return Some(line.freeze());
        }
        if self.buf.len() > self.max_line {
            self.split_happened = true;
            let cut = utf8_boundary(&self.buf[..self.max_line]);
            self.scanned = 0;
            return Some(self.buf.split_to(cut).freeze());
        }
        self.scanned = self.buf.len();
        None
    }

    /// Every complete line (or over-long piece) read so far and, at end of file, the last
    /// line without `\n` too.
    pub fn take_lines(&mut self, at_eof: bool) -> Vec<Bytes> {
        let mut lines: Vec<Bytes> = std::iter::from_fn(|| self.next_line()).collect();
        if at_eof {
            lines.extend(self.finish());
        }
        if self.buf.is_empty() {
            // No partial line: let the buffer go (the lines keep what they need until sent).
            self.buf = BytesMut::new();
        }
        lines
    }

    /// At end of file: what is left, if anything (a last line without `\n`).
    pub fn finish(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        if self.buf.is_empty() {
            return None;
        }
        let mut rest = self.buf.split();
        if rest.last() == Some(&b'\r') {
            rest.truncate(rest.len() - 1);
        }
        Some(rest.freeze())
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// The largest length `<= piece.len()` that does not cut a UTF-8 character in two; the whole
/// piece when it does not end inside a character (or is not UTF-8 at all there).
fn utf8_boundary(piece: &[u8]) -> usize {
    let len = piece.len();
    // Look back at most 3 bytes for the start of the last character.
    for back in 1..=3.min(len) {
        let b = piece[len - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte
        }
        let width = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return len,
        };
        return if width > back && len - back > 0 {
            len - back
        } else {
            len
        };
    }
    len
}

/// Text frames must be valid UTF-8: invalid sequences become U+FFFD. Returns the text and
/// whether anything was replaced.
pub fn to_text(line: Bytes) -> (tokio_tungstenite::tungstenite::Utf8Bytes, bool) {
    if std::str::from_utf8(&line).is_ok() {
        // SAFETY: just checked to be valid UTF-8.
        (
            unsafe { tokio_tungstenite::tungstenite::Utf8Bytes::from_bytes_unchecked(line) },
            false,
        )
    } else {
        (String::from_utf8_lossy(&line).into_owned().into(), true)
    }
}

/// Encodes a line as websocketd 0.5's `--passstderr` JSON, byte for byte as Go's
/// `encoding/json` writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped, invalid UTF-8 replaced.
pub fn tagged_json(stream: &str, line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len() + 32);
    out.push_str("{\"stream\":\"");
    out.push_str(stream);
    out.push_str("\",\"data\":\"");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => {
                let n = c as u32;
                out.push_str("\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(HEX[((n >> shift) & 0xF) as usize] as char);
                }
            }
            c => out.push(c),
        }
    }
    out.push_str("\"}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut LineSplitter, data: &[u8]) -> Vec<Bytes> {
        s.buffer().extend_from_slice(data);
        s.take_lines(false)
    }

    #[test]
    fn lines_are_split_and_crlf_stripped() {
        let mut s = LineSplitter::new(1024);
        assert_eq!(feed(&mut s, b"a\r\nb\n\nc"), vec![&b"a"[..], b"b", b""]);
        assert_eq!(feed(&mut s, b"d\n"), vec![&b"cd"[..]]);
        assert_eq!(feed(&mut s, b"tail"), Vec::<Bytes>::new());
        assert_eq!(s.finish().as_deref(), Some(&b"tail"[..]));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn long_lines_come_in_pieces_on_character_boundaries() {
        let mut s = LineSplitter::new(4);
        assert_eq!(
            feed(&mut s, b"abcdefghij\n"),
            vec![&b"abcd"[..], b"efgh", b"ij"]
        );
        assert!(s.split_happened);
        let mut s = LineSplitter::new(4);
        // "aé" is 3 bytes; "aéé" is 5: the cut must not fall inside the second é.
        let pieces = feed(&mut s, "aéé\n".as_bytes());
        assert_eq!(pieces, vec![Bytes::from("aé"), Bytes::from("é")]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (text, replaced) = to_text(Bytes::from_static(b"a\xffb"));
        assert_eq!(text.as_str(), "a\u{fffd}b");
        assert!(replaced);
    }

    #[test]
    fn json_matches_go() {
        assert_eq!(
            tagged_json("stderr", b"a\"<b>&\\\t\x01"),
            r#"{"stream":"stderr","data":"a\"\u003cb\u003e\u0026\\\t\u0001"}"#
        );
    }
}
