//! The lineage graph: principals → the actions they ran → the datasets
//! those touched, with each edge saying read / write / export and whether
//! a human approved the action (who, when) or policy allowed it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{ActionRecord, Use};
use crate::time::Period;

/// Most actions one graph shows (the newest); narrower filters show the rest.
pub const MAX_ACTIONS: usize = 200;

/// Which actions a graph (or a report) covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// When it ran (else when it was decided).
    pub period: Period,
    /// One principal (`agent:report-bot`).
    pub agent: Option<String>,
    /// A dataset URI, or a prefix of one.
    pub dataset: Option<String>,
    /// The environment (`prod`).
    pub environment: Option<String>,
    /// Only these principals (what the caller may see); `None`: all.
    pub visible: Option<BTreeSet<String>>,
}

impl Filter {
    /// No filter: everything.
    pub fn all() -> Filter {
        Filter {
            period: Period::all(),
            agent: None,
            dataset: None,
            environment: None,
            visible: None,
        }
    }

    /// Whether `r` is inside the filter (datasets aside).
    pub fn admits(&self, r: &ActionRecord) -> bool {
        self.period.contains(r.time())
            && self.agent.as_ref().is_none_or(|a| *a == r.principal)
            && self
                .environment
                .as_ref()
                .is_none_or(|e| r.environment.as_deref() == Some(e.as_str()))
            && self
                .visible
                .as_ref()
                .is_none_or(|v| v.contains(&r.principal))
    }

    /// Whether dataset `d` is inside the filter.
    pub fn admits_dataset(&self, d: &str) -> bool {
        self.dataset
            .as_ref()
            .is_none_or(|f| d.starts_with(f.as_str()))
    }
}

/// What kind of thing a dataset URI names, from its scheme.
pub fn dataset_kind(uri: &str) -> &'static str {
    let scheme = uri.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" | "mysql" | "sqlite" | "snowflake" | "bigquery" | "redshift"
        | "mssql" | "oracle" => "table",
        "s3" | "s3a" | "gs" | "gcs" | "az" | "abfs" | "abfss" | "wasbs" => "bucket",
        "http" | "https" => "endpoint",
        "mcp" => "tool",
        "file" => "file",
        _ => "dataset",
    }
}

/// Who approved an action and when quorum was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedBy {
    /// The approvers, in order.
    pub by: Vec<String>,
    /// When the request was approved.
    pub at: String,
    /// The `request.approved` entry.
    pub index: u64,
}

/// A node: a principal, an action, or a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `principal:<id>`, `action:<id>` or `dataset:<uri>`.
    pub id: String,
    /// `principal`, `action` or `dataset`.
    pub kind: String,
    /// What to show: the principal id, `kind.operation`, the URI.
    pub label: String,
    /// `agent`/`user`/`service`; `sql`, `mcp`…; `table`, `bucket`,
    /// `endpoint`, `tool`, `file`, `dataset`.
    pub category: String,
    /// Actions: the request that held it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Actions: who approved it; `None` when policy allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved: Option<ApprovedBy>,
    /// Actions: when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Actions: the resource acted on; its outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Log entries about it (actions: all of them; others: none).
    pub entries: Vec<u64>,
}

/// An edge: principal → action (`ran`), action → dataset (`read`,
/// `write`, `export`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// `ran`, `read`, `write` or `export`.
    pub kind: String,
    /// Set when a human approved the action; absent when policy allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved: Option<ApprovedBy>,
    /// The request behind it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The entries that show it: the action's decision and execution.
    pub entries: Vec<u64>,
}

/// The graph, and what it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Executed actions shown.
    pub actions: usize,
    /// More actions matched than [`MAX_ACTIONS`]; the oldest were left out.
    pub truncated: bool,
}

impl Node {
    /// A node with no action details.
    fn plain(id: String, kind: &str, label: &str, category: String) -> Node {
        Node {
            id,
            kind: kind.into(),
            label: label.into(),
            category,
            request: None,
            approved: None,
            at: None,
            resource: None,
            outcome: None,
            entries: vec![],
        }
    }
}

fn principal_category(id: &str) -> String {
    id.split_once(':')
        .map(|(k, _)| k.to_string())
        .unwrap_or_else(|| "principal".into())
}

/// Builds the graph of the executed actions among `records` that `filter`
/// admits (and that touch an admitted dataset), newest [`MAX_ACTIONS`].
pub fn build(records: &[ActionRecord], filter: &Filter) -> Graph {
    let mut chosen: Vec<(&ActionRecord, Vec<(String, Use)>)> = records
        .iter()
        .filter(|r| r.was_executed() && filter.admits(r))
        .filter_map(|r| {
            let ds: Vec<(String, Use)> = r
                .datasets()
                .into_iter()
                .filter(|(d, _)| filter.admits_dataset(d))
                .collect();
            (!ds.is_empty()).then_some((r, ds))
        })
        .collect();
    let truncated = chosen.len() > MAX_ACTIONS;
    if truncated {
        chosen.drain(..chosen.len() - MAX_ACTIONS);
    }
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut edges = Vec::new();
    let mut add = |nodes: &mut BTreeMap<String, Node>, n: Node| {
        if !nodes.contains_key(&n.id) {
            order.push(n.id.clone());
            nodes.insert(n.id.clone(), n);
        }
    };
    for (r, ds) in &chosen {
        let pid = format!("principal:{}", r.principal);
        add(
            &mut nodes,
            Node::plain(
                pid.clone(),
                "principal",
                &r.principal,
                principal_category(&r.principal),
            ),
        );
        let approved = r.approved.as_ref().map(|m| ApprovedBy {
            by: r.approvals.iter().map(|a| a.by.clone()).collect(),
            at: m.at.clone(),
            index: m.index,
        });
        let request = r.held().then(|| r.id.clone());
        let aid = format!("action:{}", r.id);
        add(
            &mut nodes,
            Node {
                request: request.clone(),
                approved: approved.clone(),
                at: r.executed.as_ref().map(|m| m.at.clone()),
                resource: Some(r.resource.clone()),
                outcome: r.result.as_ref().map(|x| x.outcome.clone()),
                entries: r.entries.clone(),
                ..Node::plain(
                    aid.clone(),
                    "action",
                    &format!("{}.{}", r.kind, r.operation),
                    r.kind.clone(),
                )
            },
        );
        let key_entries: Vec<u64> = std::iter::once(r.decided.index)
            .chain(r.approved.as_ref().map(|m| m.index))
            .chain(r.executed.as_ref().map(|m| m.index))
            .collect();
        edges.push(Edge {
            from: pid,
            to: aid.clone(),
            kind: "ran".into(),
            approved: approved.clone(),
            request: request.clone(),
            entries: key_entries.clone(),
        });
        for (d, u) in ds {
            let did = format!("dataset:{d}");
            add(
                &mut nodes,
                Node::plain(did.clone(), "dataset", d, dataset_kind(d).into()),
            );
            let mut entries = key_entries.clone();
            if let Some(res) = &r.result {
                entries.push(res.mark.index);
            }
            edges.push(Edge {
                from: aid.clone(),
                to: did,
                kind: u.as_str().into(),
                approved: approved.clone(),
                request: request.clone(),
                entries,
            });
        }
    }
    let nodes = order
        .into_iter()
        .filter_map(|id| nodes.remove(&id))
        .collect();
    Graph {
        nodes,
        edges,
        actions: chosen.len(),
        truncated,
    }
}
