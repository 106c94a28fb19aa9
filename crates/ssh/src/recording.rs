//! Session recordings in asciicast v2 (one JSON header line, then one JSON
//! array `[seconds, "o", text]` per chunk of terminal output), kept in the
//! recordings directory as `<execution id>.cast` for the configured
//! retention. The log holds each recording's SHA-256 and size, so a kept
//! file can be checked against what was recorded.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A recording being written.
pub struct Recorder {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    started: Instant,
    /// Bytes of an incomplete UTF-8 character at the end of the last chunk.
    tail: Vec<u8>,
}

/// What a finished recording is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// Whether `id` may name a recording file (execution ids are
/// `act_…`/`req_…`: letters, digits, `_`, `-`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Makes the recordings directory if it is missing, readable by the
/// gateway's user alone (a directory that exists keeps its mode), and
/// says why it cannot be used otherwise.
pub fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    Ok(())
}

/// [`prepare_dir`], and a file can be made in it (the gateway's start).
pub fn check_dir(dir: &Path) -> std::io::Result<()> {
    prepare_dir(dir)?;
    let probe = dir.join(format!(".secondkey-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

pub fn path_of(dir: &Path, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| dir.join(format!("{id}.cast")))
}

impl Recorder {
    /// Starts `<dir>/<id>.cast` with the terminal's size and type.
    pub fn create(
        dir: &Path,
        id: &str,
        width: u32,
        height: u32,
        term: &str,
    ) -> std::io::Result<Recorder> {
        let path = path_of(dir, id).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad recording id")
        })?;
        prepare_dir(dir)?;
        // A terminal session can show secrets: only the gateway's user
        // reads its recording.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut file = std::io::BufWriter::new(file);
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = json!({"version": 2, "width": width.max(1), "height": height.max(1),
                            "timestamp": ts, "env": {"TERM": term}});
        writeln!(file, "{header}")?;
        Ok(Recorder {
            file,
            path,
            started: Instant::now(),
            tail: Vec::new(),
        })
    }

    /// Appends terminal output.
    pub fn output(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut bytes = std::mem::take(&mut self.tail);
        bytes.extend_from_slice(data);
        // Keep an incomplete character for the next chunk.
        let cut = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => bytes.len(),
        };
        self.tail = bytes.split_off(cut);
        if bytes.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&bytes);
        let t = self.started.elapsed().as_secs_f64();
        let line = Value::Array(vec![
            json!((t * 1e6).round() / 1e6),
            json!("o"),
            json!(text),
        ]);
        writeln!(self.file, "{line}")
    }

    /// Notes a terminal resize (asciicast `r` event: `"COLSxROWS"`).
    pub fn resize(&mut self, width: u32, height: u32) -> std::io::Result<()> {
        let t = self.started.elapsed().as_secs_f64();
        let line = json!([(t * 1e6).round() / 1e6, "r", format!("{width}x{height}")]);
        writeln!(self.file, "{line}")
    }

    /// Flushes and closes; returns the digest and size of the file.
    pub fn finish(mut self) -> std::io::Result<Finished> {
        if !self.tail.is_empty() {
            let rest = std::mem::take(&mut self.tail);
            let text = String::from_utf8_lossy(&rest).to_string();
            let t = self.started.elapsed().as_secs_f64();
            writeln!(self.file, "{}", json!([t, "o", text]))?;
        }
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        let bytes = std::fs::read(&self.path)?;
        Ok(Finished {
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: bytes.len() as u64,
            path: self.path,
        })
    }
}

/// Deletes recordings older than `retention`; returns how many.
pub fn prune(dir: &Path, retention: Duration) -> std::io::Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let now = SystemTime::now();
    let mut n = 0;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("cast") {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > retention);
        if old && std::fs::remove_file(&p).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Errors reading a recording back.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    #[error("cannot read the recording: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message} (not an asciicast v2 recording)")]
    Format { line: usize, message: String },
}

/// One parsed recording: its header and output events.
#[derive(Debug, Clone)]
pub struct Cast {
    pub header: Value,
    /// (seconds since start, text) of each output event.
    pub output: Vec<(f64, String)>,
}

/// Reads an asciicast v2 file.
pub fn read(text: &str) -> Result<Cast, PlayError> {
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next().ok_or(PlayError::Format {
        line: 1,
        message: "empty file".into(),
    })?;
    let header: Value = serde_json::from_str(first).map_err(|e| PlayError::Format {
        line: 1,
        message: e.to_string(),
    })?;
    if header.get("version").and_then(Value::as_u64) != Some(2) {
        return Err(PlayError::Format {
            line: 1,
            message: "the header's version is not 2".into(),
        });
    }
    let mut output = Vec::new();
    for (i, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| PlayError::Format {
            line: i + 1,
            message: m.to_string(),
        };
        let v: Value = serde_json::from_str(l).map_err(|e| bad(&e.to_string()))?;
        let (Some(t), Some(kind), Some(data)) = (
            v.get(0).and_then(Value::as_f64),
            v.get(1).and_then(Value::as_str),
            v.get(2).and_then(Value::as_str),
        ) else {
            return Err(bad("an event is [time, code, data]"));
        };
        if kind == "o" {
            output.push((t, data.to_string()));
        }
    }
    Ok(Cast { header, output })
}

/// Replays `cast` to `out`, waiting between events (divided by `speed`,
/// each pause at most `max_pause`).
pub fn play(
    cast: &Cast,
    out: &mut dyn Write,
    speed: f64,
    max_pause: Duration,
) -> std::io::Result<()> {
    let mut last = 0.0f64;
    for (t, text) in &cast.output {
        let gap = ((t - last).max(0.0) / speed.max(0.001)).min(max_pause.as_secs_f64());
        if gap > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(gap));
        }
        last = *t;
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_reads_back_with_split_characters_joined() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::create(dir.path(), "act_1", 80, 24, "xterm").unwrap();
        let snow = "☃".as_bytes();
        r.output(b"hello ").unwrap();
        r.output(&snow[..1]).unwrap();
        r.output(&snow[1..]).unwrap();
        r.output(b"\r\n").unwrap();
        let f = r.finish().unwrap();
        let text = std::fs::read_to_string(&f.path).unwrap();
        assert_eq!(f.bytes, text.len() as u64);
        let cast = read(&text).unwrap();
        let all: String = cast.output.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(all, "hello ☃\r\n");
        assert_eq!(cast.header["width"], 80);
        let mut out = Vec::new();
        play(&cast, &mut out, 1000.0, Duration::from_millis(1)).unwrap();
        assert_eq!(out, "hello ☃\r\n".as_bytes());
        // A second recording under the same id is refused, not overwritten.
        assert!(Recorder::create(dir.path(), "act_1", 80, 24, "xterm").is_err());
        assert!(path_of(dir.path(), "../etc/passwd").is_none());
    }

    #[test]
    fn malformed_recordings_are_refused_with_the_line() {
        assert!(matches!(read(""), Err(PlayError::Format { line: 1, .. })));
        assert!(matches!(
            read("{\"version\": 1}"),
            Err(PlayError::Format { line: 1, .. })
        ));
        let e = read("{\"version\": 2}\n[1.0, \"o\"]\n").unwrap_err();
        assert!(matches!(e, PlayError::Format { line: 2, .. }), "{e}");
    }
}
