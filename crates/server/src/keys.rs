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

/// Reads a secret key file, refusing one that others may read: private to
/// its owner, or — as PostgreSQL allows for its TLS key — owned by root
/// and readable by its group too (mode 0640 at most) when this process is
/// not root and that group is one of its own. That is how Kubernetes
/// mounts a secret for a pod with an `fsGroup`: root's files, read through
/// that group. The file is opened once (without blocking, so a FIFO is
/// refused, not waited on) and that handle checked and read. Other
/// private keys the gateway holds (the SSH gateway's) are read this way
/// too.
pub fn read_secret(path: &Path) -> Result<String, KeyError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = opts.open(path).map_err(|e| file_err(path, e))?;
    let meta = file.metadata().map_err(|e| file_err(path, e))?;
    if !meta.is_file() {
        return Err(file_err(path, "is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = meta.permissions().mode() & 0o777;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if mode & forbidden_bits(meta.uid(), meta.gid(), euid, is_own_group) != 0 {
            return Err(file_err(
                path,
                format!(
                    "may be read or written by others than its owner (mode {mode:o}); run `chmod 600 {}` (a Kubernetes secret: mount it with `defaultMode: 0440` and an `fsGroup` the gateway runs in — a key owned by root may be readable by one group of the gateway's own)",
                    path.display()
                ),
            ));
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| file_err(path, e))?;
    Ok(text.trim().to_string())
}

/// The permission bits a key file owned by `uid`:`gid` must not have, for
/// a process running as `euid`: none for group or others, except that a
/// file of root's may be readable by its group when that group is one of
/// the (non-root) process's own.
#[cfg(unix)]
fn forbidden_bits(uid: u32, gid: u32, euid: u32, own_group: impl Fn(u32) -> bool) -> u32 {
    if uid == 0 && euid != 0 && own_group(gid) {
        0o037
    } else {
        0o077
    }
}

/// Whether `gid` is this process's effective group or one of its
/// supplementary groups.
#[cfg(unix)]
fn is_own_group(gid: u32) -> bool {
    // SAFETY: getegid has no preconditions and cannot fail.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    // SAFETY: with a size of 0 getgroups only counts the groups.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let Ok(len) = usize::try_from(n) else {
        return false;
    };
    let mut groups = vec![0 as libc::gid_t; len];
    // SAFETY: `groups` has room for `n` entries, as passed.
    let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    usize::try_from(n).is_ok_and(|n| groups[..n.min(len)].contains(&gid))
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

    /// Readable by its group: only a file of root's, only for a process
    /// that is not root, and only through one of the process's own
    /// groups; never writable by the group, never readable by others.
    #[cfg(unix)]
    #[test]
    fn a_group_readable_key_is_taken_only_from_root_through_an_own_group() {
        let mine = |g: u32| g == 2000;
        // (file uid, file gid, process euid, bit, forbidden)
        for (uid, gid, euid, bit, forbidden, why) in [
            (0, 2000, 1000, 0o040, false, "root's, own group: may read"),
            (0, 2000, 1000, 0o020, true, "the group may not write"),
            (0, 2000, 1000, 0o004, true, "others may not read"),
            (0, 100, 1000, 0o040, true, "a group not the process's own"),
            (0, 2000, 0, 0o040, true, "a root process needs no group bit"),
            (1000, 2000, 1000, 0o040, true, "not root's: private"),
        ] {
            assert_eq!(
                forbidden_bits(uid, gid, euid, mine) & bit != 0,
                forbidden,
                "{why}"
            );
        }
        // Through the files themselves: whoever runs this, a group-readable
        // key is taken only under the rule above, and group-writable or
        // world-readable ones never.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("grant.key");
        let k = load_or_create_grant_key(&g).unwrap();
        let set = |mode| std::fs::set_permissions(&g, std::fs::Permissions::from_mode(mode));
        set(0o440).unwrap();
        let meta = std::fs::metadata(&g).unwrap();
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let allowed = forbidden_bits(meta.uid(), meta.gid(), euid, is_own_group) & 0o040 == 0;
        match load_or_create_grant_key(&g) {
            Ok(again) => {
                assert!(allowed, "a group-readable key was taken against the rule");
                assert_eq!(again.verifying_key(), k.verifying_key());
            }
            Err(e) => {
                assert!(
                    !allowed,
                    "a group-readable key the rule allows was refused: {e}"
                );
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        for mode in [0o460, 0o444] {
            set(mode).unwrap();
            let e = load_or_create_grant_key(&g).unwrap_err().to_string();
            assert!(e.contains(&format!("mode {mode:o}")), "{e}");
        }
    }

    /// A FIFO where a key should be is refused, not waited on.
    #[cfg(unix)]
    #[test]
    fn a_key_path_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("grant.key");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = load_or_create_grant_key(&fifo).unwrap_err().to_string();
        assert!(e.contains("is not a regular file"), "{e}");
    }
}
