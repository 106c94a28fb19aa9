//! Stand-ins for the `secondkey-core` types this crate needs, with the same
//! shape, until core publishes them. Switching is a change of `use` lines.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What an agent intends to do (see the brief's "Action" contract).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub kind: String,
    pub operation: String,
    pub resource: String,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub justification: Option<String>,
    #[serde(default)]
    pub on_behalf_of: Option<PrincipalId>,
    #[serde(default)]
    pub context: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub lineage: Lineage,
}

/// Datasets an action reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    #[serde(default)]
    pub reads: Vec<String>,
    #[serde(default)]
    pub writes: Vec<String>,
}

/// The kind of a principal, from the prefix of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    User,
    Agent,
    Service,
}

/// A principal id such as `user:alice`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PrincipalId(String);

impl PrincipalId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("principal id `{s}` must look like `user:alice`"))?;
        if name.is_empty() || !matches!(kind, "user" | "agent" | "service") {
            return Err(format!(
                "principal id `{s}` must be `user:<name>`, `agent:<name>` or `service:<name>`"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn kind(&self) -> PrincipalKind {
        match self.0.split_once(':').map(|(k, _)| k) {
            Some("agent") => PrincipalKind::Agent,
            Some("service") => PrincipalKind::Service,
            _ => PrincipalKind::User,
        }
    }

    pub fn name(&self) -> &str {
        self.0.split_once(':').map_or(self.0.as_str(), |(_, n)| n)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PrincipalId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
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

/// An authenticated principal.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub id: PrincipalId,
    pub owner: Option<PrincipalId>,
    pub groups: BTreeSet<String>,
}

/// What a review needs: `quorum` distinct approvers from any of `groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub policy_id: String,
    pub groups: Vec<String>,
    pub quorum: u32,
}
