//! A checked request turned into an action (pure): kind `http` (or `k8s`),
//! the operation from the route rules, the OpenAPI document or the
//! Kubernetes profile, resource `https://<upstream>/<path>` (or
//! `k8s://<cluster>/…`), and params that bind exactly what is forwarded —
//! method, canonical path and query, the recorded headers and the body.

use http::Method;
use serde_json::{json, Map, Value};

use crate::config::{Profile, UpstreamConfig};
use crate::k8s;
use crate::request::{query_value, HeaderFacts, Target};
use crate::routes::{match_routes, Matched};

/// An action and the facts the gateway derived alongside it.
#[derive(Debug, Clone)]
pub struct Shaped {
    pub action: Value,
    /// Merged under `context.gateway` (never anything the client declared
    /// about itself: these are read off the request by the gateway).
    pub facts: Map<String, Value>,
    pub operation: String,
    pub reads: Vec<String>,
    pub writes: Vec<String>,
}

/// Builds the action of a checked request.
pub fn shape(
    up: &UpstreamConfig,
    method: &Method,
    target: &Target,
    headers: &HeaderFacts,
    body: Option<Value>,
) -> Shaped {
    let route = match_routes(&up.routes, method, &target.segments);
    let (kind, resource, matched, k8s_facts) = match up.profile {
        Profile::Kubernetes => {
            let r = k8s::parse(method, &target.segments, &target.query);
            let uri = r.resource_uri(&up.cluster, &target.path);
            let facts = r.facts(&up.cluster, &target.query);
            let m = route.unwrap_or_else(|| Matched {
                operation: r.operation.to_string(),
                source: "kubernetes",
                label: None,
                operation_id: None,
                reads: vec![],
                writes: vec![],
            });
            ("k8s", uri, m, Some(facts))
        }
        Profile::Plain => {
            let m = route
                .or_else(|| {
                    up.openapi
                        .as_ref()
                        .and_then(|a| a.find(method, &target.segments))
                })
                .unwrap_or_else(Matched::unmatched);
            let path = target.path.trim_start_matches('/');
            ("http", format!("https://{}/{path}", up.name), m, None)
        }
    };
    let mut params = Map::new();
    params.insert("method".into(), json!(method.as_str()));
    params.insert("path".into(), json!(target.path));
    if !target.query.is_empty() {
        params.insert("query".into(), query_value(target, &up.query_lists));
    }
    if !headers.recorded.is_empty() {
        let h: Map<String, Value> = headers
            .recorded
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        params.insert("headers".into(), Value::Object(h));
    }
    if let Some(u) = &headers.upgrade {
        params.insert("upgrade".into(), json!(u));
    }
    if let Some(b) = body {
        params.insert("body".into(), b);
    }
    let mut action = Map::new();
    action.insert("kind".into(), json!(kind));
    action.insert("operation".into(), json!(matched.operation));
    action.insert("resource".into(), json!(resource));
    action.insert("params".into(), Value::Object(params));
    if !matched.reads.is_empty() || !matched.writes.is_empty() {
        action.insert(
            "lineage".into(),
            json!({"reads": matched.reads, "writes": matched.writes}),
        );
    }
    let mut http_facts = Map::new();
    http_facts.insert("upstream".into(), json!(up.name));
    http_facts.insert("method".into(), json!(method.as_str()));
    http_facts.insert("path".into(), json!(target.path));
    http_facts.insert("operation_source".into(), json!(matched.source));
    if let Some(l) = &matched.label {
        http_facts.insert("route".into(), json!(l));
    }
    if let Some(id) = &matched.operation_id {
        http_facts.insert("operation_id".into(), json!(id));
    }
    if let Some(u) = &headers.upgrade {
        http_facts.insert("upgrade".into(), json!(u));
    }
    let mut facts = Map::new();
    facts.insert("http".into(), Value::Object(http_facts));
    if let Some(k) = k8s_facts {
        facts.insert("k8s".into(), k);
    }
    Shaped {
        action: Value::Object(action),
        facts,
        operation: matched.operation,
        reads: matched.reads,
        writes: matched.writes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{body_value, check_headers, parse_target};
    use std::collections::{BTreeSet, HashMap};

    fn upstream(extra: &str) -> UpstreamConfig {
        let text = format!(
            "[[http]]\nname = \"billing\"\nupstream = \"http://127.0.0.1:9\"\nprincipals = [\"agent:bot\"]\n{extra}"
        );
        let v: toml::Value = toml::from_str(&text).unwrap();
        let p: BTreeSet<String> = ["agent:bot".to_string()].into();
        crate::config::parse(&v["http"], std::path::Path::new("/"), &p, &HashMap::new())
            .unwrap()
            .remove(0)
    }

    fn shape_of(
        up: &UpstreamConfig,
        m: Method,
        path: &str,
        q: Option<&str>,
        body: &[u8],
    ) -> Shaped {
        let t = parse_target(path, q, &up.query_lists).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        let hf = check_headers(&h, &up.headers).unwrap();
        let b = body_value(body, hf.media_type.as_deref()).unwrap();
        shape(up, &m, &t, &hf, b)
    }

    #[test]
    fn an_action_binds_method_path_query_headers_and_body() {
        let up = upstream("[[http.routes]]\nmatch = \"POST /invoices/*/refunds\"\noperation = \"write\"\nreads = [\"billing://invoices/{1}\"]\nwrites = [\"billing://refunds\"]\n");
        let s = shape_of(
            &up,
            Method::POST,
            "/invoices/in_1/refunds",
            Some("dry_run=false"),
            br#"{"amount":500}"#,
        );
        assert_eq!(s.action["kind"], "http");
        assert_eq!(s.action["operation"], "write");
        assert_eq!(
            s.action["resource"],
            "https://billing/invoices/in_1/refunds"
        );
        assert_eq!(s.action["params"]["query"], json!({"dry_run": "false"}));
        assert_eq!(
            s.action["params"]["headers"],
            json!({"content-type": "application/json"})
        );
        assert_eq!(s.action["params"]["body"]["json"], json!({"amount": 500}));
        assert_eq!(
            s.action["lineage"],
            json!({"reads": ["billing://invoices/in_1"], "writes": ["billing://refunds"]})
        );
        assert_eq!(s.facts["http"]["route"], "POST /invoices/*/refunds");
        secondkey_core::action::Action::from_json(&s.action).expect("a valid action");
        // A different body is a different action (and digest).
        let other = shape_of(
            &up,
            Method::POST,
            "/invoices/in_1/refunds",
            Some("dry_run=false"),
            br#"{"amount": 500}"#,
        );
        assert_ne!(
            other.action, s.action,
            "the body's bytes are bound by their digest"
        );
    }

    #[test]
    fn an_unmatched_route_is_the_most_privileged_class_never_a_read() {
        let up = upstream("[[http.routes]]\nmatch = \"GET /invoices/*\"\noperation = \"read\"\n");
        for (m, p) in [
            (Method::GET, "/invoices"),
            (Method::GET, "/Invoices/1"),
            (Method::DELETE, "/invoices/1"),
            (Method::GET, "/invoices/1/"),
        ] {
            let s = shape_of(&up, m.clone(), p, None, b"");
            assert_eq!(s.action["operation"], "admin", "{m} {p}");
            assert_eq!(s.facts["http"]["operation_source"], "unmatched");
        }
    }

    #[test]
    fn the_kubernetes_profile_names_k8s_resources() {
        let up = upstream("profile = \"kubernetes\"\ncluster = \"prod\"\n");
        let s = shape_of(
            &up,
            Method::DELETE,
            "/apis/apps/v1/namespaces/shop/deployments/web",
            None,
            b"",
        );
        assert_eq!(s.action["kind"], "k8s");
        assert_eq!(s.action["operation"], "delete");
        assert_eq!(s.action["resource"], "k8s://prod/shop/deployments.apps/web");
        assert_eq!(s.facts["k8s"]["verb"], "delete");
        secondkey_core::action::Action::from_json(&s.action).expect("a valid action");
    }
}
