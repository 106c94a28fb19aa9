//! The server side of SCRAM-SHA-256 (RFC 5802/7677), as PostgreSQL speaks
//! it, so clients authenticate to the gateway as their secondkey principal
//! without the gateway storing anything a thief could log in with: the
//! configured verifier (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`,
//! PostgreSQL's own format, printed by `secondkey pg verifier`) only checks
//! proofs. The password is the principal's secondkey token.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";

/// A parsed verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(SCRAM-SHA-256, redacted)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>; generate one with `secondkey pg verifier`)")]
    BadVerifier,
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("channel binding is not supported by this gateway")]
    ChannelBinding,
    #[error("password authentication failed")]
    Failed,
}

fn key32(s: &str) -> Option<[u8; 32]> {
    let v = B64.decode(s).ok()?;
    v.try_into().ok()
}

impl std::str::FromStr for Verifier {
    type Err = ScramError;
    fn from_str(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = params.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let iterations: u32 = iter.parse().map_err(|_| ScramError::BadVerifier)?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier);
        }
        Ok(Verifier {
            iterations,
            salt: B64.decode(salt).map_err(|_| ScramError::BadVerifier)?,
            stored_key: key32(stored).ok_or(ScramError::BadVerifier)?,
            server_key: key32(server).ok_or(ScramError::BadVerifier)?,
        })
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().into()
}

impl Verifier {
    /// Derives a verifier from a password (tests, and for operators who
    /// prefer to compute it themselves).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// A new verifier for `token`, with a random salt and PostgreSQL's default
/// 4096 iterations.
pub fn new_verifier(token: &str) -> String {
    postgres_protocol::password::scram_sha_256(token.as_bytes())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One server-side exchange. With `verifier = None` (an unknown user) it
/// plays along with a made-up salt and fails at the end, so a client
/// cannot tell unknown principals from wrong passwords.
pub struct ServerExchange {
    verifier: Option<Verifier>,
    fake: Verifier,
    nonce: String,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
}

impl ServerExchange {
    pub fn new(verifier: Option<Verifier>, random: [u8; 18]) -> Self {
        ServerExchange {
            fake: Verifier {
                iterations: 4096,
                salt: Sha256::digest(random).to_vec()[..16].to_vec(),
                stored_key: [0; 32],
                server_key: [0; 32],
            },
            verifier,
            nonce: B64.encode(random),
            client_first_bare: String::new(),
            server_first: String::new(),
            gs2_header: String::new(),
        }
    }

    fn v(&self) -> &Verifier {
        self.verifier.as_ref().unwrap_or(&self.fake)
    }

    /// Takes the client-first message, returns the server-first message.
    pub fn first(&mut self, client_first: &[u8]) -> Result<String, ScramError> {
        let s = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed)?;
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = s.splitn(3, ',');
        let flag = parts.next().ok_or(ScramError::Malformed)?;
        let authz = parts.next().ok_or(ScramError::Malformed)?;
        let bare = parts.next().ok_or(ScramError::Malformed)?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        }
        if !authz.is_empty() && !authz.starts_with("a=") {
            return Err(ScramError::Malformed);
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|c| (0x21..=0x7e).contains(&c) && c != b','))
            .ok_or(ScramError::Malformed)?;
        if bare
            .split(',')
            .any(|a| a.starts_with("m=") || a.as_bytes().get(1) != Some(&b'='))
        {
            return Err(ScramError::Malformed);
        }
        self.gs2_header = format!("{flag},{authz},");
        self.client_first_bare = bare.to_string();
        self.nonce = format!("{client_nonce}{}", self.nonce);
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(&self.v().salt),
            self.v().iterations
        );
        Ok(self.server_first.clone())
    }

    /// Checks the client-final message; returns the server-final message.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let s = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = s.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut cbind = None;
        let mut nonce = None;
        for a in without_proof.split(',') {
            if let Some(v) = a.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = a.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let cbind = B64
            .decode(cbind.ok_or(ScramError::Malformed)?)
            .map_err(|_| ScramError::Malformed)?;
        if cbind != self.gs2_header.as_bytes() {
            return Err(ScramError::Failed);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Failed);
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed)?;
        if proof.len() != 32 {
            return Err(ScramError::Failed);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let v = self.verifier.as_ref().ok_or(ScramError::Failed)?;
        let signature = hmac(&v.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        if !ct_eq(&Sha256::digest(&client_key), &v.stored_key) {
            return Err(ScramError::Failed);
        }
        let server_sig = hmac(&v.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(verifier: Option<Verifier>, password: &str) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut server = ServerExchange::new(verifier, [7; 18]);
        let first = server.first(client.message())?;
        client
            .update(first.as_bytes())
            .map_err(|_| ScramError::Malformed)?;
        let fin = server.finish(client.message())?;
        client
            .finish(fin.as_bytes())
            .map_err(|_| ScramError::Failed)
    }

    #[test]
    fn a_real_client_authenticates_with_the_right_password_only() {
        let v = Verifier::derive("the-token-of-report-bot", b"0123456789abcdef", 4096);
        assert_eq!(exchange(Some(v.clone()), "the-token-of-report-bot"), Ok(()));
        assert_eq!(exchange(Some(v), "wrong"), Err(ScramError::Failed));
        assert_eq!(exchange(None, "anything"), Err(ScramError::Failed));
    }

    #[test]
    fn verifiers_from_postgres_protocol_parse_and_work() {
        let s = postgres_protocol::password::scram_sha_256(b"tok-123");
        let v: Verifier = s.parse().unwrap();
        assert_eq!(v.encode(), s);
        assert_eq!(exchange(Some(v), "tok-123"), Ok(()));
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:YQ==$YQ==:YQ==",
            "SCRAM-SHA-256$4096:YQ==$YQ==:YQ==",
        ] {
            assert!(bad.parse::<Verifier>().is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_and_replayed_messages_fail() {
        let v = Verifier::derive("pw", b"salt", 4096);
        let mut s = ServerExchange::new(Some(v.clone()), [1; 18]);
        for bad in [
            &b""[..],
            b"x",
            b"n,,",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,,n=,r=a,b",
        ] {
            assert!(ServerExchange::new(Some(v.clone()), [1; 18])
                .first(bad)
                .is_err());
        }
        s.first(b"n,,n=,r=clientnonce").unwrap();
        assert!(s.finish(b"c=biws,r=wrongnonce,p=AAAA").is_err());
        assert!(s.finish(b"garbage").is_err());
        // A proof made for another exchange (other server nonce) fails.
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let mut other = ServerExchange::new(Some(v.clone()), [2; 18]);
        let first = other.first(client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        let mut fresh = ServerExchange::new(Some(v), [3; 18]);
        fresh.first(b"n,,n=,r=x").unwrap();
        assert_eq!(fresh.finish(client.message()), Err(ScramError::Failed));
    }
}
