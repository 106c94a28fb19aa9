//! The Kubernetes profile: a Kubernetes API request read from its path,
//! method and query the way the API server reads it (its
//! `RequestInfoFactory`): `/api/v1/…` (core group) and
//! `/apis/<group>/<version>/…`, then `namespaces/<ns>/` and
//! `<resource>[/<name>[/<subresource>]]`; the legacy `/watch/` prefix and
//! `?watch=true` make a watch.
//!
//! Operations: reads (get, list, watch, logs) are `read`; create/update/
//! patch are `write` — of RBAC objects and service-account tokens,
//! `grant`; of admission webhooks and policies and API services, `admin`;
//! delete and deletecollection are `delete`; every request on core
//! `secrets` is `export` (the API server answers patches, updates and
//! deletes with the object too); exec, attach, port-forward and adding an
//! ephemeral container are `exec`; the proxy subresource, the legacy
//! `/api/v1/proxy/` path and anything the parser does not recognise are
//! `admin`.

use http::Method;
use serde_json::{json, Map, Value};

/// A parsed Kubernetes API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sRequest {
    /// get, list, watch, create, update, patch, delete, deletecollection
    /// (for a resource), or the lowercase method (for a non-resource path).
    pub verb: String,
    /// `None` for a non-resource path (`/version`, `/api`, `/openapi/v2`).
    pub resource: Option<ResourceRef>,
    pub operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

fn query<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A boolean query parameter as the API server converts it
/// (`Convert_Slice_string_To_bool` in apimachinery): present and anything
/// but `0` or `false` (any case) is true, the empty value included.
fn truthy(v: Option<&str>) -> bool {
    v.is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Reads a request. `segments` are the decoded path segments.
pub fn parse(method: &Method, segments: &[String], q: &[(String, String)]) -> K8sRequest {
    // Reading discovery (`/api`, `/apis/<group>/<version>`), `/version`,
    // the OpenAPI documents and the health checks is a read; anything
    // else off the resource paths (`/logs`, `/debug/pprof`, `/metrics`, a
    // path this list does not know) is `admin`, as is every other method.
    let nonresource = |known: bool| K8sRequest {
        operation: if known && matches!(*method, Method::GET | Method::HEAD) {
            "read"
        } else {
            "admin"
        },
        verb: method.as_str().to_ascii_lowercase(),
        resource: None,
    };
    let s: Vec<&str> = segments
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, mut rest) = match s.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        [] | ["api"] | ["apis"] | ["apis", _] => return nonresource(true),
        ["version" | "openapi" | "healthz" | "livez" | "readyz", ..] => return nonresource(true),
        _ => return nonresource(false),
    };
    if rest.is_empty() {
        // Discovery of a group version.
        return nonresource(true);
    }
    // The legacy `/api/v1/proxy/…` form reaches nodes, pods and services
    // through the API server, as the `proxy` subresource does.
    if rest[0] == "proxy" {
        return K8sRequest {
            verb: "proxy".into(),
            resource: None,
            operation: "admin",
        };
    }
    let mut watch_prefix = false;
    if rest[0] == "watch" {
        watch_prefix = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    // `/namespaces/<ns>` and its subresources (`/status`, `/finalize`) are
    // the namespace object itself; anything else under it is scoped to it.
    if rest.len() > 2 && rest[0] == "namespaces" && !matches!(rest[2], "status" | "finalize") {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let (resource, name, subresource) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, sub] => (*r, Some(*n), Some(*sub)),
        _ => {
            return K8sRequest {
                verb: method.as_str().to_ascii_lowercase(),
                resource: None,
                operation: "admin",
            }
        }
    };
    if resource.is_empty() {
        return nonresource(true);
    }
    let watch = watch_prefix || truthy(query(q, "watch"));
    let verb = match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if name.is_none() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    };
    let is_rbac = group == "rbac.authorization.k8s.io"
        && matches!(
            resource,
            "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings"
        );
    let grants = is_rbac
        || (group.is_empty() && resource == "serviceaccounts" && subresource == Some("token"))
        || (group == "certificates.k8s.io" && subresource == Some("approval"));
    // Objects whose writes take over the API server itself: admission
    // webhooks and policies see (and change) every write, an API service
    // answers for a whole group.
    let controls_api = matches!(
        (group, resource),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations"
                | "validatingwebhookconfigurations"
                | "validatingadmissionpolicies"
                | "validatingadmissionpolicybindings"
                | "mutatingadmissionpolicies"
                | "mutatingadmissionpolicybindings"
        ) | ("apiregistration.k8s.io", "apiservices")
    );
    let reads = matches!(verb, "get" | "list" | "watch");
    let operation = match (verb, subresource) {
        (_, Some("exec" | "attach" | "portforward")) => "exec",
        // `kubectl debug`: an ephemeral container runs any command in the pod.
        (_, Some("ephemeralcontainers")) if !reads => "exec",
        (_, Some("proxy")) => "admin",
        ("unknown", _) => "admin",
        // The API server answers a read, a patch, an update or a delete of
        // a secret with the object, its data included (a `dryRun` patch
        // changes nothing and still returns it): every request on secrets
        // reveals them.
        _ if group.is_empty() && resource == "secrets" => "export",
        ("get" | "list" | "watch", _) => "read",
        _ if controls_api => "admin",
        ("delete" | "deletecollection", None) => "delete",
        ("create", Some("eviction")) => "delete",
        _ if grants => "grant",
        ("delete" | "deletecollection", Some(_)) => "write",
        _ => "write",
    };
    K8sRequest {
        verb: verb.to_string(),
        operation,
        resource: Some(ResourceRef {
            group: group.to_string(),
            version: version.to_string(),
            resource: resource.to_string(),
            subresource: subresource.map(str::to_string),
            namespace,
            name: name.map(str::to_string),
        }),
    }
}

impl K8sRequest {
    /// `k8s://<cluster>/<namespace>/<resource>[.<group>][/<name>[/<subresource>]]`;
    /// cluster-scoped objects sit under `_cluster`, a list across all
    /// namespaces under `_all`, and non-resource paths under `_path`.
    pub fn resource_uri(&self, cluster: &str, canonical_path: &str) -> String {
        let Some(r) = &self.resource else {
            return format!("k8s://{cluster}/_path{canonical_path}");
        };
        let scope = match (&r.namespace, &r.name) {
            (Some(ns), _) => ns.as_str(),
            (None, _) if is_namespaced_list(r) => "_all",
            (None, _) => "_cluster",
        };
        let mut out = format!("k8s://{cluster}/{scope}/{}", r.resource);
        if !r.group.is_empty() {
            out.push('.');
            out.push_str(&r.group);
        }
        if let Some(n) = &r.name {
            out.push('/');
            out.push_str(n);
        }
        if let Some(s) = &r.subresource {
            out.push('/');
            out.push_str(s);
        }
        out
    }

    /// The facts policy sees under `context.gateway.k8s`.
    pub fn facts(&self, cluster: &str, q: &[(String, String)]) -> Value {
        let mut m = Map::new();
        m.insert("cluster".into(), json!(cluster));
        m.insert("verb".into(), json!(self.verb));
        if let Some(r) = &self.resource {
            m.insert("group".into(), json!(r.group));
            m.insert("version".into(), json!(r.version));
            m.insert("resource".into(), json!(r.resource));
            if let Some(s) = &r.subresource {
                m.insert("subresource".into(), json!(s));
            }
            if let Some(ns) = &r.namespace {
                m.insert("namespace".into(), json!(ns));
            }
            if let Some(n) = &r.name {
                m.insert("name".into(), json!(n));
            }
            if matches!(r.subresource.as_deref(), Some("exec" | "attach")) {
                let command: Vec<&str> = q
                    .iter()
                    .filter(|(k, _)| k == "command")
                    .map(|(_, v)| v.as_str())
                    .collect();
                m.insert("command".into(), json!(command));
            }
            if let Some(c) = query(q, "container") {
                m.insert("container".into(), json!(c));
            }
            if let Some(s) = query(q, "labelSelector") {
                m.insert("label_selector".into(), json!(s));
            }
            if let Some(s) = query(q, "fieldSelector") {
                m.insert("field_selector".into(), json!(s));
            }
            if r.subresource.as_deref() == Some("log") {
                m.insert("follow".into(), json!(truthy(query(q, "follow"))));
            }
        }
        // `dryRun=All` is validated and answered but not stored (the API
        // server refuses any other value).
        m.insert("dry_run".into(), json!(query(q, "dryRun") == Some("All")));
        Value::Object(m)
    }
}

/// A list of a namespaced kind without a namespace spans all namespaces;
/// without the API's discovery we only know the common cluster-scoped kinds.
fn is_namespaced_list(r: &ResourceRef) -> bool {
    const CLUSTER_SCOPED: [&str; 12] = [
        "namespaces",
        "nodes",
        "persistentvolumes",
        "clusterroles",
        "clusterrolebindings",
        "customresourcedefinitions",
        "storageclasses",
        "priorityclasses",
        "apiservices",
        "certificatesigningrequests",
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    ];
    r.name.is_none() && !CLUSTER_SCOPED.contains(&r.resource.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(m: Method, path: &str, q: &str) -> (K8sRequest, String, Value) {
        let t =
            crate::request::parse_target(path, Some(q), &["command".to_string()].into()).unwrap();
        let r = parse(&m, &t.segments, &t.query);
        let uri = r.resource_uri("prod", &t.path);
        let facts = r.facts("prod", &t.query);
        (r, uri, facts)
    }

    /// What kubectl's requests are, as the API server reads them.
    #[test]
    fn kubectl_requests_read_as_the_api_server_reads_them() {
        for (m, path, q, verb, op, uri) in [
            (
                Method::GET,
                "/api/v1/namespaces/default/pods",
                "limit=500",
                "list",
                "read",
                "k8s://prod/default/pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods/web-1",
                "",
                "get",
                "read",
                "k8s://prod/default/pods/web-1",
            ),
            (
                Method::GET,
                "/api/v1/pods",
                "",
                "list",
                "read",
                "k8s://prod/_all/pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods",
                "watch=true",
                "watch",
                "read",
                "k8s://prod/default/pods",
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/default/pods",
                "",
                "watch",
                "read",
                "k8s://prod/default/pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/prod/secrets/db",
                "",
                "get",
                "export",
                "k8s://prod/prod/secrets/db",
            ),
            (
                Method::GET,
                "/api/v1/secrets",
                "",
                "list",
                "export",
                "k8s://prod/_all/secrets",
            ),
            (
                Method::POST,
                "/apis/apps/v1/namespaces/default/deployments",
                "fieldManager=kubectl-client-side-apply",
                "create",
                "write",
                "k8s://prod/default/deployments.apps",
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/default/deployments/web",
                "",
                "patch",
                "write",
                "k8s://prod/default/deployments.apps/web",
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/default/deployments/web/scale",
                "",
                "patch",
                "write",
                "k8s://prod/default/deployments.apps/web/scale",
            ),
            (
                Method::DELETE,
                "/apis/apps/v1/namespaces/prod/deployments/web",
                "",
                "delete",
                "delete",
                "k8s://prod/prod/deployments.apps/web",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/default/pods",
                "",
                "deletecollection",
                "delete",
                "k8s://prod/default/pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods/web-1/exec",
                "command=ls&command=-l&container=app",
                "get",
                "exec",
                "k8s://prod/default/pods/web-1/exec",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/default/pods/web-1/exec",
                "command=sh",
                "create",
                "exec",
                "k8s://prod/default/pods/web-1/exec",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/default/pods/web-1/portforward",
                "",
                "create",
                "exec",
                "k8s://prod/default/pods/web-1/portforward",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods/web-1/log",
                "follow=true",
                "get",
                "read",
                "k8s://prod/default/pods/web-1/log",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/services/web/proxy",
                "",
                "get",
                "admin",
                "k8s://prod/default/services/web/proxy",
            ),
            (
                Method::POST,
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                "",
                "create",
                "grant",
                "k8s://prod/_cluster/clusterrolebindings.rbac.authorization.k8s.io",
            ),
            (
                Method::PUT,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings/rb",
                "",
                "update",
                "grant",
                "k8s://prod/x/rolebindings.rbac.authorization.k8s.io/rb",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/x/serviceaccounts/sa/token",
                "",
                "create",
                "grant",
                "k8s://prod/x/serviceaccounts/sa/token",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/x/pods/p/eviction",
                "",
                "create",
                "delete",
                "k8s://prod/x/pods/p/eviction",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/kube-system",
                "",
                "get",
                "read",
                "k8s://prod/_cluster/namespaces/kube-system",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/kube-system",
                "",
                "delete",
                "delete",
                "k8s://prod/_cluster/namespaces/kube-system",
            ),
            (
                Method::GET,
                "/api/v1/nodes",
                "",
                "list",
                "read",
                "k8s://prod/_cluster/nodes",
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/x/finalize",
                "",
                "update",
                "write",
                "k8s://prod/_cluster/namespaces/x/finalize",
            ),
            (
                Method::GET,
                "/api",
                "",
                "get",
                "read",
                "k8s://prod/_path/api",
            ),
            (
                Method::GET,
                "/apis/apps/v1",
                "",
                "get",
                "read",
                "k8s://prod/_path/apis/apps/v1",
            ),
            (
                Method::GET,
                "/version",
                "",
                "get",
                "read",
                "k8s://prod/_path/version",
            ),
            (
                Method::POST,
                "/version",
                "",
                "post",
                "admin",
                "k8s://prod/_path/version",
            ),
            // Off the resource paths only discovery, the OpenAPI documents
            // and health checks are reads: the node logs, profiling and
            // metrics endpoints, or any path not listed, are admin.
            (
                Method::GET,
                "/openapi/v3/apis/apps/v1",
                "",
                "get",
                "read",
                "k8s://prod/_path/openapi/v3/apis/apps/v1",
            ),
            (
                Method::GET,
                "/readyz",
                "",
                "get",
                "read",
                "k8s://prod/_path/readyz",
            ),
            (
                Method::GET,
                "/logs/syslog",
                "",
                "get",
                "admin",
                "k8s://prod/_path/logs/syslog",
            ),
            (
                Method::GET,
                "/debug/pprof/profile",
                "",
                "get",
                "admin",
                "k8s://prod/_path/debug/pprof/profile",
            ),
            (
                Method::GET,
                "/metrics",
                "",
                "get",
                "admin",
                "k8s://prod/_path/metrics",
            ),
            (
                Method::GET,
                "/foo/bar",
                "",
                "get",
                "admin",
                "k8s://prod/_path/foo/bar",
            ),
            // Every request on secrets answers with the secret: a no-op
            // dry-run patch, an update, a delete.
            (
                Method::PATCH,
                "/api/v1/namespaces/prod/secrets/db",
                "dryRun=All",
                "patch",
                "export",
                "k8s://prod/prod/secrets/db",
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/prod/secrets/db",
                "",
                "update",
                "export",
                "k8s://prod/prod/secrets/db",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/prod/secrets/db",
                "",
                "delete",
                "export",
                "k8s://prod/prod/secrets/db",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/prod/secrets",
                "labelSelector=app%3Dweb",
                "deletecollection",
                "export",
                "k8s://prod/prod/secrets",
            ),
            // A secret-like name in another group is an ordinary object.
            (
                Method::PATCH,
                "/apis/example.com/v1/namespaces/prod/secrets/db",
                "",
                "patch",
                "write",
                "k8s://prod/prod/secrets.example.com/db",
            ),
            // `kubectl debug` adds an ephemeral container: a command in the pod.
            (
                Method::PATCH,
                "/api/v1/namespaces/default/pods/web-1/ephemeralcontainers",
                "",
                "patch",
                "exec",
                "k8s://prod/default/pods/web-1/ephemeralcontainers",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods/web-1/ephemeralcontainers",
                "",
                "get",
                "read",
                "k8s://prod/default/pods/web-1/ephemeralcontainers",
            ),
            // Writes that take over the API server.
            (
                Method::POST,
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                "",
                "create",
                "admin",
                "k8s://prod/_cluster/mutatingwebhookconfigurations.admissionregistration.k8s.io",
            ),
            (
                Method::PATCH,
                "/apis/apiregistration.k8s.io/v1/apiservices/v1.metrics.k8s.io",
                "",
                "patch",
                "admin",
                "k8s://prod/_cluster/apiservices.apiregistration.k8s.io/v1.metrics.k8s.io",
            ),
            (
                Method::GET,
                "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
                "",
                "list",
                "read",
                "k8s://prod/_cluster/validatingwebhookconfigurations.admissionregistration.k8s.io",
            ),
            // The legacy proxy path, and a watch however the server reads it.
            (
                Method::GET,
                "/api/v1/proxy/nodes/n1/stats",
                "",
                "proxy",
                "admin",
                "k8s://prod/_path/api/v1/proxy/nodes/n1/stats",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods",
                "watch=True",
                "watch",
                "read",
                "k8s://prod/default/pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods",
                "watch=",
                "watch",
                "read",
                "k8s://prod/default/pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/default/pods",
                "watch=FALSE",
                "list",
                "read",
                "k8s://prod/default/pods",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/pods/b/c/d",
                "",
                "get",
                "admin",
                "k8s://prod/_path/api/v1/namespaces/a/pods/b/c/d",
            ),
        ] {
            let (r, got_uri, _) = req(m.clone(), path, q);
            assert_eq!(
                (r.verb.as_str(), r.operation, got_uri.as_str()),
                (verb, op, uri),
                "{m} {path}?{q}"
            );
        }
    }

    #[test]
    fn exec_decisions_see_the_command_and_container() {
        let (_, _, f) = req(
            Method::GET,
            "/api/v1/namespaces/default/pods/web-1/exec",
            "command=sh&command=-c&command=rm+-rf+%2F&container=app&stdout=true",
        );
        assert_eq!(f["command"], json!(["sh", "-c", "rm -rf /"]));
        assert_eq!(f["container"], "app");
        assert_eq!(f["namespace"], "default");
        assert_eq!(f["subresource"], "exec");
        let (_, _, f) = req(
            Method::GET,
            "/api/v1/namespaces/default/pods/web-1/log",
            "follow=true&container=app",
        );
        assert_eq!(
            (f["follow"].clone(), f["container"].clone()),
            (json!(true), json!("app"))
        );
    }

    #[test]
    fn selectors_and_dry_run_are_facts() {
        let (_, _, f) = req(
            Method::DELETE,
            "/api/v1/namespaces/prod/configmaps",
            "labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dcfg",
        );
        assert_eq!(f["label_selector"], "app=web");
        assert_eq!(f["field_selector"], "metadata.name=cfg");
        assert_eq!(f["dry_run"], false);
        let (_, _, f) = req(
            Method::PATCH,
            "/apis/apps/v1/namespaces/prod/deployments/web",
            "dryRun=All",
        );
        assert_eq!(f["dry_run"], true);
        // The server refuses any other value; it is never a dry run here.
        let (_, _, f) = req(
            Method::PATCH,
            "/apis/apps/v1/namespaces/prod/deployments/web",
            "dryRun=all",
        );
        assert_eq!(f["dry_run"], false);
    }
}
