//! Persisted sink cursors: the next log index a sink must deliver.
//!
//! One small file per sink in a directory, replaced atomically (write a temp
//! file, fsync it, rename over the old one, fsync the directory) so a crash
//! leaves either the old or the new value, never a torn one. The cursor only
//! moves after the receiver acknowledged an entry, which is what makes
//! delivery at-least-once across crashes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a cursor could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// The sink name cannot be used as a file name.
    #[error("invalid sink name {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ - (not starting with a dot)")]
    InvalidName(String),
    /// File system failure.
    #[error("cursor file {path}: {source}; check that the data directory exists and is writable")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file holds something other than a number.
    #[error("cursor file {path} is corrupt ({content:?}); fix or delete it (deleting re-sends the whole log)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
}

/// Where a sink's cursor — the next log index to deliver — is kept: a file
/// in the data directory ([`FileCursor`]), or the shared store when several
/// replicas take turns delivering. Called from a blocking thread.
pub trait Cursor: Send + Sync + 'static {
    /// The next index to deliver; 0 when the sink never delivered anything.
    fn load(&self) -> Result<u64, String>;
    /// Durably records `next` as the next index to deliver.
    fn save(&self, next: u64) -> Result<(), String>;
}

impl Cursor for FileCursor {
    fn load(&self) -> Result<u64, String> {
        FileCursor::load(self).map_err(|e| e.to_string())
    }
    fn save(&self, next: u64) -> Result<(), String> {
        FileCursor::save(self, next).map_err(|e| e.to_string())
    }
}

/// The persisted cursor of one sink.
#[derive(Debug, Clone)]
pub struct FileCursor {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl FileCursor {
    /// The cursor of sink `name` in `dir` (created if missing). The sink name
    /// becomes the file name, so it must be file-name safe.
    pub fn open(dir: impl AsRef<Path>, name: &str) -> Result<Self, CursorError> {
        if !valid_name(name) {
            return Err(CursorError::InvalidName(name.to_string()));
        }
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|source| CursorError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(FileCursor {
            path: dir.join(format!("{name}.cursor")),
            tmp: dir.join(format!(".{name}.cursor.tmp")),
            dir,
        })
    }

    /// The file holding the cursor.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next index to deliver; 0 when the sink never delivered anything.
    pub fn load(&self) -> Result<u64, CursorError> {
        match fs::read_to_string(&self.path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| CursorError::Corrupt {
                    path: self.path.clone(),
                    content: text.chars().take(64).collect(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(CursorError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Durably records `next` as the next index to deliver.
    pub fn save(&self, next: u64) -> Result<(), CursorError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CursorError::Io { path, source }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)
            .map_err(io(&self.tmp))?;
        file.write_all(format!("{next}\n").as_bytes())
            .map_err(io(&self.tmp))?;
        file.sync_all().map_err(io(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_zero_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileCursor::open(dir.path().join("sinks"), "siem-1").unwrap();
        assert_eq!(c.load().unwrap(), 0);
        c.save(42).unwrap();
        assert_eq!(c.load().unwrap(), 42);
        let again = FileCursor::open(dir.path().join("sinks"), "siem-1").unwrap();
        assert_eq!(again.load().unwrap(), 42);
        again.save(43).unwrap();
        assert_eq!(c.load().unwrap(), 43);
        assert!(!dir.path().join("sinks/.siem-1.cursor.tmp").exists());
    }

    #[test]
    fn rejects_unsafe_names_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(matches!(
                FileCursor::open(dir.path(), bad),
                Err(CursorError::InvalidName(_))
            ));
        }
        let c = FileCursor::open(dir.path(), "s").unwrap();
        fs::write(c.path(), "garbage").unwrap();
        assert!(matches!(c.load(), Err(CursorError::Corrupt { .. })));
    }
}
