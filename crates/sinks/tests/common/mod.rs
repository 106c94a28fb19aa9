//! Test support shared by the sink integration tests.

// Each test file uses part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use secondkey_sinks::runner::{EntrySource, SourceError};

/// An in-memory log the runner reads from, as the server's store would be.
#[derive(Default)]
pub struct MemLog(Mutex<Vec<Vec<u8>>>);

impl MemLog {
    /// Appends an entry; returns the new log size.
    pub fn append(&self, entry: Vec<u8>) -> u64 {
        let mut log = self.0.lock().unwrap();
        log.push(entry);
        log.len() as u64
    }

    pub fn all(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }
}

impl EntrySource for MemLog {
    fn read_from(&self, start: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SourceError> {
        let log = self.0.lock().unwrap();
        Ok(log
            .iter()
            .enumerate()
            .skip(start as usize)
            .take(max)
            .map(|(i, e)| (i as u64, e.clone()))
            .collect())
    }
}

/// A TLS server identity for `name`, self-signed: the acceptor, and the
/// certificate as a CA file (in the returned directory) for the client.
pub fn tls_server(name: &str) -> (tempfile::TempDir, PathBuf, tokio_rustls::TlsAcceptor) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    (dir, ca, tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}
