//! The gateway's two signing keys: the log's checkpoint signer (C2SP note
//! format) and the grant key (Ed25519 for EdDSA JWS). Both are created on
//! first start with mode 0600 and never logged.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::SigningKey;
use secondkey_log::note::Signer;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> KeyError {
    KeyError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Writes `contents` to a new file readable only by its owner. Fails if the
/// file exists, so a key is never silently replaced.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), KeyError> {
    if let Some(dir) = path.parent() {
        // A directory made for a secret is its user's alone.
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir).map_err(|e| file_err(path, e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(path, e))?;
    Ok(())
}

/// Reads a secret key file, refusing one that others may read. As
/// PostgreSQL does for its TLS key: private to its owner, or — owned by
/// root — readable by its group as well (mode 0640 at most), which is how
/// Kubernetes mounts a secret for a pod with an `fsGroup`: the files are
/// root's and the gateway reads them through that group.
fn read_secret(path: &Path) -> Result<String, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(|e| file_err(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & too_open_for(meta.uid()) != 0 {
            return Err(file_err(
                path,
                format!(
                    "is readable by others (mode {mode:o}); run `chmod 600 {}` (a key file owned by root may also be readable by its group: 640)",
                    path.display()
                ),
            ));
        }
    }
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| file_err(path, e))
}

/// The permission bits a key file owned by `uid` must not have.
#[cfg(unix)]
fn too_open_for(uid: u32) -> u32 {
    if uid == 0 {
        0o037
    } else {
        0o077
    }
}

/// Loads an existing log signer; never creates one (for verbs that only
/// read, such as `log export`).
pub fn load_log_signer(path: &Path, origin: &str) -> Result<Signer, KeyError> {
    if !path.exists() {
        return Err(file_err(
            path,
            "does not exist; run this where the gateway's keys are, or set [log].key_file",
        ));
    }
    load_or_create_log_signer(path, origin)
}

/// Loads the log signer, creating it (named after the log origin) if the
/// file does not exist. A signer whose name differs from the origin is an
/// error: verifiers would look for the wrong key name.
pub fn load_or_create_log_signer(path: &Path, origin: &str) -> Result<Signer, KeyError> {
    if !path.exists() {
        let signer = Signer::generate(origin).map_err(|e| file_err(path, e))?;
        write_secret_file(path, &format!("{}\n", signer.to_string()))?;
        return Ok(signer);
    }
    let text = read_secret(path)?;
    let signer: Signer = text
        .parse()
        .map_err(|e| file_err(path, format!("not a note signer key: {e}")))?;
    if signer.name() != origin {
        return Err(file_err(
            path,
            format!(
                "the key is named {:?} but [log].origin is {origin:?}; use a key generated for this origin (`secondkey keys generate --name {origin}`)",
                signer.name()
            ),
        ));
    }
    Ok(signer)
}

/// Loads the grant signing key (base64 of the 32-byte Ed25519 seed),
/// creating it if the file does not exist.
pub fn load_or_create_grant_key(path: &Path) -> Result<SigningKey, KeyError> {
    load_or_create_secret(path).map(|seed| SigningKey::from_bytes(&seed))
}

/// Loads a 32-byte secret kept as base64 in `path` (mode 0600), creating a
/// random one if the file does not exist: the grant key's seed, the web
/// session key.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if !path.exists() {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| file_err(path, e))?;
        write_secret_file(path, &format!("{}\n", b64.encode(seed)))?;
        return Ok(seed);
    }
    let text = read_secret(path)?;
    let bytes = b64
        .decode(text.as_bytes())
        .map_err(|e| file_err(path, format!("not base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| file_err(path, "must hold a 32-byte secret in base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys/log.key");
        let s1 = load_or_create_log_signer(&p, "example.org/log").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let s2 = load_or_create_log_signer(&p, "example.org/log").unwrap();
        assert_eq!(s1.verifier().to_string(), s2.verifier().to_string());
        let e = load_or_create_log_signer(&p, "other/log")
            .unwrap_err()
            .to_string();
        assert!(e.contains("other/log"), "{e}");

        let g = dir.path().join("keys/grant.key");
        let k1 = load_or_create_grant_key(&g).unwrap();
        let k2 = load_or_create_grant_key(&g).unwrap();
        assert_eq!(k1.verifying_key(), k2.verifying_key());
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("grant.key");
        load_or_create_grant_key(&g).unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_grant_key(&g).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    /// Readable by its group: only if root owns the file (a Kubernetes
    /// secret mounted for an `fsGroup`), and never writable by the group.
    #[cfg(unix)]
    #[test]
    fn a_group_readable_key_is_taken_only_from_root() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(too_open_for(0) & 0o040, 0, "root's: the group may read");
        assert_ne!(
            too_open_for(0) & 0o020,
            0,
            "root's: the group may not write"
        );
        assert_ne!(too_open_for(0) & 0o004, 0, "root's: others may not read");
        assert_ne!(too_open_for(1000) & 0o040, 0, "anyone else's: private");
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("grant.key");
        let k = load_or_create_grant_key(&g).unwrap();
        let set = |mode| std::fs::set_permissions(&g, std::fs::Permissions::from_mode(mode));
        set(0o440).unwrap();
        let root = std::fs::metadata(&g).unwrap().uid() == 0;
        match load_or_create_grant_key(&g) {
            Ok(again) => {
                assert!(root, "a group-readable key not owned by root was taken");
                assert_eq!(again.verifying_key(), k.verifying_key());
            }
            Err(e) => {
                assert!(!root, "a group-readable key owned by root was refused: {e}");
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        for mode in [0o460, 0o444] {
            set(mode).unwrap();
            let e = load_or_create_grant_key(&g).unwrap_err().to_string();
            assert!(e.contains(&format!("mode {mode:o}")), "{e}");
        }
    }
}
