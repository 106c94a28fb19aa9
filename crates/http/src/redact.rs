//! Keeping the upstream's credential out of what goes back to the client.
//!
//! An upstream may echo request headers (httpbin's `/headers`, debug
//! endpoints, error pages quoting the request). Every response header and
//! body chunk is scanned for the credential (the header value and the
//! secret itself, and for Basic its base64 form) and each occurrence is
//! overwritten with `*` of the same length, so lengths and framing stay
//! valid. An occurrence split across chunks is caught: the end of a chunk
//! that could begin a credential is held back until the next chunk.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// Masks credentials in a stream of chunks.
pub struct Redactor {
    needles: std::sync::Arc<Vec<Vec<u8>>>,
    held: BytesMut,
    /// Occurrences masked so far.
    pub masked: u64,
}

impl Redactor {
    pub fn new(needles: std::sync::Arc<Vec<Vec<u8>>>) -> Redactor {
        Redactor {
            needles,
            held: BytesMut::new(),
            masked: 0,
        }
    }

    /// Masks every occurrence in `buf`; returns how many.
    pub fn mask(needles: &[Vec<u8>], buf: &mut [u8]) -> u64 {
        let mut n = 0;
        for needle in needles {
            let mut from = 0;
            while let Some(i) = memmem::find(&buf[from..], needle) {
                let at = from + i;
                buf[at..at + needle.len()].fill(b'*');
                from = at + needle.len();
                n += 1;
            }
        }
        n
    }

    /// Takes a chunk; returns what may be sent now.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.needles.is_empty() {
            return chunk;
        }
        self.held.extend_from_slice(&chunk);
        self.masked += Self::mask(&self.needles, &mut self.held);
        // Hold back the longest tail that is a proper prefix of a needle.
        let len = self.held.len();
        let keep = self
            .needles
            .iter()
            .map(|n| {
                (1..n.len().min(len + 1))
                    .rev()
                    .find(|&k| self.held[len - k..] == n[..k])
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        self.held.split_to(len - keep).freeze()
    }

    /// The end of the stream: whatever was held back.
    /// Whether nothing is held back waiting for the next chunk.
    pub fn holds_nothing(&self) -> bool {
        self.held.is_empty()
    }

    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.held).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn run(needles: &[&str], chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = Redactor::new(Arc::new(
            needles.iter().map(|n| n.as_bytes().to_vec()).collect(),
        ));
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.push(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&r.finish());
        out
    }

    #[test]
    fn a_credential_split_across_chunks_is_masked() {
        let out = run(
            &["Bearer s3cret-token", "s3cret-token"],
            &[b"{\"Authorization\": \"Bearer s3c", b"ret-tok", b"en\"}"],
        );
        assert_eq!(out, b"{\"Authorization\": \"*******************\"}");
        let out = run(&["s3cret"], &[b"s3cret s3", b"cret s3"]);
        assert_eq!(out, b"****** ****** s3");
    }

    #[test]
    fn text_that_cannot_start_a_credential_is_not_held() {
        let mut r = Redactor::new(Arc::new(vec![b"s3cret".to_vec()]));
        assert_eq!(
            &r.push(Bytes::from_static(b"{\"event\":1}\n"))[..],
            b"{\"event\":1}\n"
        );
        assert_eq!(&r.push(Bytes::from_static(b"abc s3"))[..], b"abc ");
        assert_eq!(&r.push(Bytes::from_static(b"x"))[..], b"s3x");
    }

    proptest! {
        /// However the stream is cut, no credential survives and nothing
        /// else changes.
        #[test]
        fn no_credential_survives_any_chunking(pre in "[a-z ]{0,20}", post in "[a-z ]{0,20}", cuts in proptest::collection::vec(0usize..60, 0..6)) {
            let secret = "tok3n";
            let text = format!("{pre}{secret}{post}{secret}");
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort();
            let mut last = 0;
            for c in cuts {
                pieces.push(&text.as_bytes()[last..c]);
                last = c;
            }
            pieces.push(&text.as_bytes()[last..]);
            let out = run(&[secret], &pieces);
            let mut want = text.clone().into_bytes();
            Redactor::mask(&[secret.as_bytes().to_vec()], &mut want);
            prop_assert_eq!(out, want);
        }
    }
}
