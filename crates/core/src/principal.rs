//! Who acts and who reviews: principal ids, kinds and groups.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What sort of principal an id names; decides who may review (only users).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A human, authenticated through the identity provider.
    User,
    /// An AI agent; acts for, or is owned by, a user.
    Agent,
    /// A pipeline or other automated service.
    Service,
}

impl PrincipalKind {
    /// The id prefix, e.g. `"user"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Agent => "agent",
            PrincipalKind::Service => "service",
        }
    }
}

/// Why a principal id or principal was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// No `kind:` prefix or an unknown one.
    #[error("principal id {0:?} must start with user:, agent: or service:, e.g. \"user:alice\"")]
    BadKind(String),
    /// The part after the colon is empty, too long or has bad characters.
    #[error("principal id {0:?} has an invalid name; use 1-128 ASCII characters from a-z 0-9 . _ @ - (capitals are read as lowercase) starting with a letter or digit")]
    BadName(String),
    /// Only agents have owners.
    #[error("{id} has an owner, but only agents have one; remove it")]
    OwnerOnNonAgent {
        /// The principal that should not have an owner.
        id: PrincipalId,
    },
    /// An agent's owner must be a human.
    #[error("{id} is owned by {owner}, but an owner must be a user (user:NAME)")]
    OwnerNotUser {
        /// The agent.
        id: PrincipalId,
        /// Its non-user owner.
        owner: PrincipalId,
    },
    /// Group names end up in Cedar entity ids and log entries.
    #[error("group {0:?} is invalid; use 1-128 printable characters without commas or quotes")]
    BadGroup(String),
}

/// A principal id such as `user:alice`, `agent:report-bot` or `service:ci`.
///
/// Parsed once at the edge so everything downstream can rely on the kind
/// prefix and a bounded, printable name. Serialized as its string form.
///
/// **One spelling per principal.** Ids are ASCII, and [`PrincipalId::parse`]
/// folds every letter to lowercase, so `user:Alice`, `USER:ALICE` and
/// `user:alice` are one principal however they reach the gateway (config,
/// static or workload tokens, OpenID Connect claims, chat links, stored
/// records). Parsing is the only way to build one, so an unfolded id cannot
/// exist. Non-ASCII names are refused rather than normalized: Unicode case
/// folding and compatibility forms (`ｅ`, `ﬁ`, the Kelvin sign) would make
/// "the same name" depend on tables that differ between identity providers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PrincipalId(String);

/// Longest accepted name after the `kind:` prefix.
pub const MAX_PRINCIPAL_NAME: usize = 128;

impl PrincipalId {
    /// Parses and validates `kind:name`, folding ASCII letters to lowercase
    /// (see the type's docs).
    pub fn parse(s: &str) -> Result<Self, PrincipalError> {
        let folded = s.to_ascii_lowercase();
        let (kind, name) = folded
            .split_once(':')
            .ok_or_else(|| PrincipalError::BadKind(s.to_string()))?;
        if !matches!(kind, "user" | "agent" | "service") {
            return Err(PrincipalError::BadKind(s.to_string()));
        }
        let valid_name = name.len() <= MAX_PRINCIPAL_NAME
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
        if !valid_name {
            return Err(PrincipalError::BadName(s.to_string()));
        }
        Ok(PrincipalId(folded))
    }

    /// Whether `name` (the part after `kind:`) is already in the one
    /// spelling ids are folded to: what a policy must write in
    /// `User::"…"` to match anyone.
    pub fn is_canonical_name(name: &str) -> bool {
        !name.bytes().any(|b| b.is_ascii_uppercase())
    }

    /// The kind named by the prefix.
    pub fn kind(&self) -> PrincipalKind {
        match self.0.split_once(':').map(|(k, _)| k) {
            Some("agent") => PrincipalKind::Agent,
            Some("service") => PrincipalKind::Service,
            // parse() admits only the three prefixes.
            _ => PrincipalKind::User,
        }
    }

    /// The name after the prefix, e.g. `alice` (Cedar entity ids use it).
    pub fn name(&self) -> &str {
        self.0.split_once(':').map_or(self.0.as_str(), |(_, n)| n)
    }

    /// The whole id, e.g. `user:alice`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PrincipalId {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PrincipalId::parse(s)
    }
}

impl TryFrom<String> for PrincipalId {
    type Error = PrincipalError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PrincipalId::parse(&s)
    }
}

impl From<PrincipalId> for String {
    fn from(p: PrincipalId) -> String {
        p.0
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An authenticated principal with what the gateway knows about it.
///
/// Requests keep a snapshot of their requester (including the owner), so a
/// later configuration change cannot open a separation-of-duties hole in a
/// pending request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Its id.
    pub id: PrincipalId,
    /// For agents only: the user accountable for it, who may never review
    /// what the agent asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<PrincipalId>,
    /// Groups it belongs to; review requirements name groups.
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// The identity-provider accounts it is known to be, each
    /// `<issuer>|<subject>`: those pinned in its configuration and the one
    /// its token or sign-in came from. One account is one person, whatever
    /// principal id it shows up as, so separation of duties and quorum
    /// compare these as well as ids (see [`Principal::same_person`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub subjects: BTreeSet<String>,
}

impl Principal {
    /// Builds a principal, checking that only agents have an owner, that the
    /// owner is a user, and that group names are sane.
    pub fn new(
        id: PrincipalId,
        owner: Option<PrincipalId>,
        groups: impl IntoIterator<Item = String>,
    ) -> Result<Principal, PrincipalError> {
        let p = Principal {
            id,
            owner,
            groups: groups.into_iter().collect(),
            subjects: BTreeSet::new(),
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the rules of [`Principal::new`] on a principal built directly.
    pub fn validate(&self) -> Result<(), PrincipalError> {
        if let Some(owner) = &self.owner {
            if self.id.kind() != PrincipalKind::Agent {
                return Err(PrincipalError::OwnerOnNonAgent {
                    id: self.id.clone(),
                });
            }
            if owner.kind() != PrincipalKind::User {
                return Err(PrincipalError::OwnerNotUser {
                    id: self.id.clone(),
                    owner: owner.clone(),
                });
            }
        }
        for g in &self.groups {
            let ok = !g.is_empty()
                && g.chars().count() <= 128
                && !g.chars().any(|c| c.is_control() || c == ',' || c == '"');
            if !ok {
                return Err(PrincipalError::BadGroup(g.clone()));
            }
        }
        Ok(())
    }

    /// Only users are humans; only humans review (invariant 3).
    pub fn is_human(&self) -> bool {
        self.id.kind() == PrincipalKind::User
    }

    /// Whether `subjects` names an identity-provider account this principal
    /// is also known as: then both are one person.
    pub fn same_person(&self, subjects: &BTreeSet<String>) -> bool {
        !self.subjects.is_disjoint(subjects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> PrincipalId {
        PrincipalId::parse(s).unwrap()
    }

    #[test]
    fn parses_ids() {
        assert_eq!(id("user:alice").kind(), PrincipalKind::User);
        assert_eq!(id("agent:report-bot").kind(), PrincipalKind::Agent);
        assert_eq!(id("service:ci").kind(), PrincipalKind::Service);
        assert_eq!(id("user:a.b_c@d-e").name(), "a.b_c@d-e");
        let long = format!("user:{}", "a".repeat(128));
        assert!(PrincipalId::parse(&long).is_ok());
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "alice", "user:", "group:x", "user:-x", "user:.x", "user:a b", "user:a:b", "user:é",
            "user:a\n",
        ] {
            assert!(PrincipalId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("user:{}", "a".repeat(129));
        assert!(matches!(
            PrincipalId::parse(&long),
            Err(PrincipalError::BadName(_))
        ));
        assert!(matches!(
            PrincipalId::parse("bot:x"),
            Err(PrincipalError::BadKind(_))
        ));
    }

    /// Letter case never makes two principals: every spelling folds to
    /// the lowercase one, and non-ASCII look-alikes are refused.
    #[test]
    fn ids_fold_to_lowercase() {
        for spelling in [
            "user:alice",
            "user:Alice",
            "user:ALICE",
            "User:alice",
            "USER:ALICE",
        ] {
            assert_eq!(id(spelling).as_str(), "user:alice", "{spelling}");
        }
        assert_eq!(id("agent:ETL-bot"), id("agent:etl-bot"));
        assert_eq!(id("user:Alice@Example.COM").name(), "alice@example.com");
        let back: PrincipalId = serde_json::from_str("\"Agent:Report-Bot\"").unwrap();
        assert_eq!(back.as_str(), "agent:report-bot");
        // The Kelvin sign, a fullwidth letter, a dotted capital I: refused,
        // not folded to something that looks like an ASCII name.
        for bad in [
            "user:\u{212A}ate",
            "user:\u{FF41}lice",
            "user:\u{130}van",
            "user:ali\u{301}ce",
        ] {
            assert!(
                matches!(PrincipalId::parse(bad), Err(PrincipalError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(PrincipalId::is_canonical_name("alice"));
        assert!(!PrincipalId::is_canonical_name("Alice"));
    }

    #[test]
    fn serde_as_string_and_validated() {
        let p = id("agent:x");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"agent:x\"");
        assert!(serde_json::from_str::<PrincipalId>("\"nobody\"").is_err());
        let back: PrincipalId = serde_json::from_str("\"service:ci\"").unwrap();
        assert_eq!(back.kind(), PrincipalKind::Service);
    }

    #[test]
    fn owner_rules() {
        assert!(Principal::new(id("agent:a"), Some(id("user:u")), vec![]).is_ok());
        assert!(matches!(
            Principal::new(id("user:a"), Some(id("user:u")), vec![]),
            Err(PrincipalError::OwnerOnNonAgent { .. })
        ));
        assert!(matches!(
            Principal::new(id("agent:a"), Some(id("agent:b")), vec![]),
            Err(PrincipalError::OwnerNotUser { .. })
        ));
        assert!(matches!(
            Principal::new(id("user:a"), None, vec!["a,b".to_string()]),
            Err(PrincipalError::BadGroup(_))
        ));
        assert!(Principal::new(id("user:a"), None, vec![])
            .unwrap()
            .is_human());
        assert!(!Principal::new(id("service:a"), None, vec![])
            .unwrap()
            .is_human());
    }

    proptest! {
        #[test]
        fn parse_display_round_trip(s in "\\PC{0,40}") {
            if let Ok(p) = PrincipalId::parse(&s) {
                prop_assert_eq!(p.to_string(), s.to_ascii_lowercase());
                prop_assert_eq!(format!("{}:{}", p.kind().as_str(), p.name()), s.to_ascii_lowercase());
                // Parsing is idempotent and blind to case.
                prop_assert_eq!(PrincipalId::parse(p.as_str()), Ok(p.clone()));
                prop_assert_eq!(PrincipalId::parse(&s.to_ascii_uppercase()), Ok(p));
            }
        }
    }
}
