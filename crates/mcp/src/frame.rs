//! Newline-delimited framing (the MCP stdio transport) with a size limit,
//! so that a peer cannot make secondkey buffer an endless line.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line is in the buffer (without its newline).
    Line,
    /// A line longer than the limit was skipped; its length so far. Its
    /// first bytes (at most [`HEAD`], and at most the limit) are left in
    /// the buffer, so that an answer can name its id.
    TooLong(usize),
    /// The peer closed the stream.
    Eof,
}

/// How much of a line over the limit is kept.
pub const HEAD: usize = 4096;

/// Reads the next line into `buf` (cleared first), at most `max` bytes;
/// a longer line is read to its end and discarded but for its head.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Frame> {
    buf.clear();
    let mut seen = 0usize;
    let mut overflow = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if overflow {
                Frame::TooLong(seen)
            } else if buf.is_empty() {
                Frame::Eof
            } else {
                drop_carriage_returns(buf);
                Frame::Line
            });
        }
        let (chunk, done) = match memchr::memchr(b'\n', avail) {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        seen += chunk.len();
        if !overflow {
            if buf.len() + chunk.len() > max {
                overflow = true;
                let keep = HEAD.min(max);
                if buf.len() < keep {
                    let more = (keep - buf.len()).min(chunk.len());
                    buf.extend_from_slice(&chunk[..more]);
                }
                buf.truncate(keep);
                // What was read of a long line is not kept either.
                buf.shrink_to(keep);
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(avail.len());
        r.consume(used);
        if done.is_some() {
            if overflow {
                return Ok(Frame::TooLong(seen));
            }
            drop_carriage_returns(buf);
            return Ok(Frame::Line);
        }
    }
}

/// Removes every `\r` from a line. In JSON a raw carriage return can only
/// be whitespace between tokens (inside a string it must be escaped), so
/// this changes no message's meaning; but a peer reading with universal
/// newlines (Python's text streams, which the official Python SDK's stdio
/// transport uses) ends a line at each one, and would read one line that
/// secondkey parsed as a harmless message as several, one of them a
/// `tools/call` nobody decided. What is forwarded holds no `\r` at all.
fn drop_carriage_returns(buf: &mut Vec<u8>) {
    if memchr::memchr(b'\r', buf).is_some() {
        buf.retain(|&b| b != b'\r');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_limits_and_eof() {
        let data = b"{\"a\":1}\r\nxxxxxxxxxxxxxxxxxxxx\n{\"b\":2}\nlast".to_vec();
        let mut r = tokio::io::BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, 10, &mut buf).await.unwrap(), Frame::Line);
        assert_eq!(buf, b"{\"a\":1}");
        assert_eq!(
            read_frame(&mut r, 10, &mut buf).await.unwrap(),
            Frame::TooLong(20)
        );
        assert_eq!(buf, b"xxxxxxxxxx", "its head, up to the limit");
        assert_eq!(read_frame(&mut r, 10, &mut buf).await.unwrap(), Frame::Line);
        assert_eq!(buf, b"{\"b\":2}");
        assert_eq!(read_frame(&mut r, 10, &mut buf).await.unwrap(), Frame::Line);
        assert_eq!(buf, b"last");
        assert_eq!(read_frame(&mut r, 10, &mut buf).await.unwrap(), Frame::Eof);
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        /// What `read_frame` should give for `data`: newline-terminated lines
        /// and an unterminated last line, each without any `\r`,
        /// and any line over `max` bytes as `TooLong` with its length and
        /// its head.
        fn model(data: &[u8], max: usize) -> Vec<(Frame, Vec<u8>)> {
            let mut out = Vec::new();
            let mut rest = data;
            while !rest.is_empty() {
                let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => (&rest[..i], &rest[i + 1..]),
                    None => (rest, &rest[rest.len()..]),
                };
                if line.len() > max {
                    out.push((Frame::TooLong(line.len()), line[..HEAD.min(max)].to_vec()));
                } else {
                    let l: Vec<u8> = line.iter().copied().filter(|&b| b != b'\r').collect();
                    out.push((Frame::Line, l));
                }
                rest = next;
            }
            out.push((Frame::Eof, Vec::new()));
            out
        }

        proptest! {
            /// Any bytes, read through any buffer size: the same frames as
            /// the model, and never more than `max` bytes held for a line.
            #[test]
            fn frames_match_the_model_whatever_the_chunking(
                data in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'\n'), Just(b'\r'), any::<u8>()], 0..80),
                cap in 1usize..9,
                max in 0usize..12,
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let got = rt.block_on(async {
                    let mut r = tokio::io::BufReader::with_capacity(cap, &data[..]);
                    let mut buf = Vec::new();
                    let mut got = Vec::new();
                    loop {
                        let f = read_frame(&mut r, max, &mut buf).await.unwrap();
                        assert!(buf.len() <= max);
                        let eof = f == Frame::Eof;
                        let line = if eof { Vec::new() } else { buf.clone() };
                        got.push((f, line));
                        if eof {
                            return got;
                        }
                    }
                });
                prop_assert_eq!(got, model(&data, max));
            }
        }
    }
}
