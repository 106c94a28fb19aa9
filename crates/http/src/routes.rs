//! Which operation a request is: route rules from the configuration
//! (`METHOD /path/*/pattern/**` → operation, with lineage), then an OpenAPI
//! document's operations, else the most privileged class ([`UNMATCHED`]).
//!
//! Patterns match decoded, canonical path segments (see
//! [`crate::request`]): `*` is one segment, `**` any number (at the end),
//! anything else a literal, case-sensitive segment.

use std::collections::BTreeMap;

use http::Method;
use serde_json::Value;

/// The operation of a request no rule matches: the most privileged class,
/// never a read.
pub const UNMATCHED: &str = "admin";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pat {
    Lit(String),
    One,
    Rest,
}

/// One route rule.
#[derive(Debug, Clone)]
pub struct Route {
    /// `None`: any method.
    methods: Option<Vec<Method>>,
    pattern: Vec<Pat>,
    pub operation: String,
    reads: Vec<String>,
    writes: Vec<String>,
    /// The rule as written, for the log and policy (`context.gateway.http.route`).
    pub label: String,
}

/// What matched a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub operation: String,
    /// `route`, `openapi` or `unmatched`.
    pub source: &'static str,
    /// The route rule or OpenAPI path template that matched.
    pub label: Option<String>,
    pub operation_id: Option<String>,
    pub reads: Vec<String>,
    pub writes: Vec<String>,
}

impl Matched {
    pub fn unmatched() -> Matched {
        Matched {
            operation: UNMATCHED.into(),
            source: "unmatched",
            label: None,
            operation_id: None,
            reads: vec![],
            writes: vec![],
        }
    }
}

fn parse_pattern(path: &str, template_braces: bool) -> Result<Vec<Pat>, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("{path:?}: a path pattern starts with '/'"))?;
    if rest.is_empty() {
        return Ok(vec![]);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let pat = match *p {
            "**" if i + 1 == parts.len() => Pat::Rest,
            "**" => return Err(format!("{path:?}: '**' may only end a pattern")),
            "*" => Pat::One,
            "" if i + 1 == parts.len() => Pat::Lit(String::new()),
            "" => return Err(format!("{path:?}: empty segment")),
            "." | ".." => return Err(format!("{path:?}: dot segment")),
            s if template_braces && s.contains('{') => Pat::One,
            s if s.contains('*') => return Err(format!("{path:?}: '*' must be a whole segment")),
            s => Pat::Lit(s.to_string()),
        };
        out.push(pat);
    }
    Ok(out)
}

/// Matches `segments` against `pattern`; the captures of `*` and `**`.
fn capture(pattern: &[Pat], segments: &[String]) -> Option<Vec<String>> {
    let mut caps = Vec::new();
    for (i, p) in pattern.iter().enumerate() {
        match p {
            Pat::Rest => {
                caps.push(segments.get(i..).unwrap_or(&[]).join("/"));
                return Some(caps);
            }
            Pat::One => {
                let s = segments.get(i)?;
                if s.is_empty() {
                    return None;
                }
                caps.push(s.clone());
            }
            Pat::Lit(l) => {
                if segments.get(i)? != l {
                    return None;
                }
            }
        }
    }
    (segments.len() == pattern.len()).then_some(caps)
}

/// Fills `{n}` (the n-th capture, from 1) in a lineage template.
fn fill(template: &str, caps: &[String]) -> String {
    let mut out = template.to_string();
    for (i, c) in caps.iter().enumerate().rev() {
        out = out.replace(&format!("{{{}}}", i + 1), c);
    }
    out
}

impl Route {
    /// Parses `"DELETE /repos/**"` (methods joined by `|`, or `*`).
    pub fn parse(
        rule: &str,
        operation: &str,
        reads: &[String],
        writes: &[String],
    ) -> Result<Route, String> {
        let (m, path) = rule.trim().split_once(' ').ok_or_else(|| {
            format!("{rule:?}: write \"METHOD /path/pattern\", e.g. \"DELETE /repos/**\"")
        })?;
        let methods = if m == "*" {
            None
        } else {
            let mut v = Vec::new();
            for one in m.split('|') {
                // A method the gateway never relays (a typo such as
                // `DELTE`) would make a rule that never matches, leaving
                // its requests to a later, perhaps wider, rule.
                let method = Method::from_bytes(one.as_bytes())
                    .ok()
                    .filter(|m| crate::request::check_method(m).is_ok() && m.as_str() == one)
                    .ok_or_else(|| {
                        format!(
                            "{one:?} is not a method the gateway relays: GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS (joined with |), or * for any"
                        )
                    })?;
                v.push(method);
            }
            Some(v)
        };
        let pattern = parse_pattern(path.trim(), false)?;
        let n = pattern.iter().filter(|p| !matches!(p, Pat::Lit(_))).count();
        for t in reads.iter().chain(writes) {
            for i in (n + 1)..=9 {
                if t.contains(&format!("{{{i}}}")) {
                    return Err(format!(
                        "{t:?} names capture {{{i}}}, but the pattern has {n}"
                    ));
                }
            }
        }
        Ok(Route {
            methods,
            pattern,
            operation: operation.to_string(),
            reads: reads.to_vec(),
            writes: writes.to_vec(),
            label: rule.trim().to_string(),
        })
    }

    fn matches(&self, method: &Method, segments: &[String]) -> Option<Matched> {
        if let Some(ms) = &self.methods {
            if !ms.contains(method) {
                return None;
            }
        }
        let caps = capture(&self.pattern, segments)?;
        Some(Matched {
            operation: self.operation.clone(),
            source: "route",
            label: Some(self.label.clone()),
            operation_id: None,
            reads: self.reads.iter().map(|t| fill(t, &caps)).collect(),
            writes: self.writes.iter().map(|t| fill(t, &caps)).collect(),
        })
    }
}

/// The first route rule that matches, in configuration order.
pub fn match_routes(routes: &[Route], method: &Method, segments: &[String]) -> Option<Matched> {
    routes.iter().find_map(|r| r.matches(method, segments))
}

/// One operation of an OpenAPI document.
#[derive(Debug, Clone)]
struct ApiOperation {
    method: Method,
    pattern: Vec<Pat>,
    template: String,
    operation_id: Option<String>,
    operation: String,
    /// Literal segments: more specific templates are tried first.
    literals: usize,
}

/// The operations of an OpenAPI 3 document (JSON), most specific first.
#[derive(Debug, Clone)]
pub struct OpenApi {
    ops: Vec<ApiOperation>,
}

/// The operation class of an HTTP method in an OpenAPI document.
pub fn default_operation(m: &Method) -> &'static str {
    match *m {
        Method::GET | Method::HEAD | Method::OPTIONS => "read",
        Method::DELETE => "delete",
        _ => "write",
    }
}

impl OpenApi {
    /// Reads a document. `overrides`: operationId → operation (the
    /// configuration's `operations`); an operation's own
    /// `x-secondkey-operation` is used otherwise, then the method's class.
    pub fn parse(bytes: &[u8], overrides: &BTreeMap<String, String>) -> Result<OpenApi, String> {
        let doc = secondkey_core::action::parse_strict(bytes).map_err(|e| {
            format!("not a JSON OpenAPI document (strict JSON: each key once): {e}")
        })?;
        if doc.get("openapi").and_then(Value::as_str).is_none()
            && doc.get("swagger").and_then(Value::as_str).is_none()
        {
            return Err("no \"openapi\" version field: not an OpenAPI document".into());
        }
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or("no \"paths\" object")?;
        let mut ops = Vec::new();
        let mut seen_ids = Vec::new();
        for (template, item) in paths {
            let pattern = parse_pattern(template, true)?;
            let Some(item) = item.as_object() else {
                continue;
            };
            for (m, op) in item {
                let method = match m.as_str() {
                    "get" | "head" | "post" | "put" | "patch" | "delete" | "options" => {
                        Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                            .map_err(|e| e.to_string())?
                    }
                    _ => continue,
                };
                let operation_id = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let own = op.get("x-secondkey-operation").and_then(Value::as_str);
                let operation = operation_id
                    .as_ref()
                    .and_then(|id| overrides.get(id).cloned())
                    .or_else(|| own.map(str::to_string))
                    .unwrap_or_else(|| default_operation(&method).to_string());
                if let Some(id) = &operation_id {
                    seen_ids.push(id.clone());
                }
                ops.push(ApiOperation {
                    literals: pattern.iter().filter(|p| matches!(p, Pat::Lit(_))).count(),
                    method,
                    pattern: pattern.clone(),
                    template: template.clone(),
                    operation_id,
                    operation,
                });
            }
        }
        if let Some(unknown) = overrides.keys().find(|k| !seen_ids.contains(k)) {
            return Err(format!(
                "operations.{unknown}: no such operationId in the document"
            ));
        }
        ops.sort_by(|a, b| {
            b.literals
                .cmp(&a.literals)
                .then(a.pattern.len().cmp(&b.pattern.len()))
        });
        Ok(OpenApi { ops })
    }

    /// The operation of a request; `HEAD` falls back to the `GET` operation.
    pub fn find(&self, method: &Method, segments: &[String]) -> Option<Matched> {
        let hit = |m: &Method| {
            self.ops
                .iter()
                .find(|o| o.method == *m && capture(&o.pattern, segments).is_some())
        };
        let op = hit(method).or_else(|| {
            (method == Method::HEAD)
                .then(|| hit(&Method::GET))
                .flatten()
        })?;
        Some(Matched {
            operation: op.operation.clone(),
            source: "openapi",
            label: Some(op.template.clone()),
            operation_id: op.operation_id.clone(),
            reads: vec![],
            writes: vec![],
        })
    }

    /// How many operations the document holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        crate::request::parse_target(p, None, &Default::default())
            .unwrap()
            .segments
    }

    #[test]
    fn route_rules_match_in_order_with_captures_for_lineage() {
        let routes = vec![
            Route::parse(
                "GET|HEAD /repos/*/*",
                "read",
                &["github://repos/{1}/{2}".into()],
                &[],
            )
            .unwrap(),
            Route::parse(
                "PUT /repos/*/*/collaborators/*",
                "grant",
                &[],
                &["github://repos/{1}/{2}/collaborators".into()],
            )
            .unwrap(),
            Route::parse(
                "DELETE /repos/**",
                "delete",
                &[],
                &["github://repos/{1}".into()],
            )
            .unwrap(),
        ];
        let m = match_routes(&routes, &Method::GET, &segs("/repos/acme/api")).unwrap();
        assert_eq!(
            (m.operation.as_str(), m.reads.clone()),
            ("read", vec!["github://repos/acme/api".to_string()])
        );
        let m = match_routes(
            &routes,
            &Method::PUT,
            &segs("/repos/acme/api/collaborators/eve"),
        )
        .unwrap();
        assert_eq!(m.operation, "grant");
        let m = match_routes(&routes, &Method::DELETE, &segs("/repos/acme/api/hooks/1")).unwrap();
        assert_eq!(
            (m.operation.as_str(), m.writes.clone()),
            (
                "delete",
                vec!["github://repos/acme/api/hooks/1".to_string()]
            )
        );
        for (m, p) in [
            (Method::GET, "/repos/acme"),
            (Method::GET, "/repos/acme/api/extra"),
            (Method::POST, "/repos/acme/api"),
            (Method::GET, "/REPOS/acme/api"),
            (Method::GET, "/repos/acme/api/"),
        ] {
            assert!(match_routes(&routes, &m, &segs(p)).is_none(), "{m} {p}");
        }
    }

    #[test]
    fn bad_rules_are_refused() {
        for r in [
            "DELETE repos",
            "delete /x",
            "DELTE /x",
            "GET|FETCH /x",
            "TRACE /x",
            "GET /a/**/b",
            "GET /a/b*",
            "GET /a//b",
            "GET /a/../b",
        ] {
            assert!(Route::parse(r, "read", &[], &[]).is_err(), "{r}");
        }
        assert!(Route::parse("GET /a/*", "read", &["x/{2}".into()], &[]).is_err());
    }

    #[test]
    fn openapi_operations_map_methods_unless_overridden() {
        let doc = br#"{"openapi":"3.0.3","paths":{
            "/pets":{"get":{"operationId":"listPets"},"post":{"operationId":"createPet"}},
            "/pets/{id}":{"get":{"operationId":"getPet"},"delete":{"operationId":"deletePet"},
                          "put":{"operationId":"updatePet","x-secondkey-operation":"admin"}},
            "/pets/mine":{"get":{"operationId":"myPets","x-secondkey-operation":"export"}},
            "/pets/{id}/owners":{"put":{"operationId":"addOwner"}}}}"#;
        let overrides: BTreeMap<String, String> =
            [("addOwner".to_string(), "grant".to_string())].into();
        let api = OpenApi::parse(doc, &overrides).unwrap();
        for (m, p, op, id) in [
            (Method::GET, "/pets", "read", "listPets"),
            (Method::HEAD, "/pets", "read", "listPets"),
            (Method::POST, "/pets", "write", "createPet"),
            (Method::GET, "/pets/7", "read", "getPet"),
            (Method::DELETE, "/pets/7", "delete", "deletePet"),
            (Method::PUT, "/pets/7", "admin", "updatePet"),
            (Method::GET, "/pets/mine", "export", "myPets"),
            (Method::PUT, "/pets/7/owners", "grant", "addOwner"),
        ] {
            let got = api.find(&m, &segs(p)).unwrap();
            assert_eq!(
                (got.operation.as_str(), got.operation_id.as_deref()),
                (op, Some(id)),
                "{m} {p}"
            );
        }
        assert!(api.find(&Method::DELETE, &segs("/pets")).is_none());
        let bad: BTreeMap<String, String> = [("nope".to_string(), "read".to_string())].into();
        assert!(OpenApi::parse(doc, &bad).unwrap_err().contains("nope"));
        assert!(OpenApi::parse(br#"{"paths":{}}"#, &BTreeMap::new()).is_err());
        assert!(OpenApi::parse(
            br#"{"openapi":"3.0.0","openapi":"3.1.0","paths":{}}"#,
            &BTreeMap::new()
        )
        .is_err());
    }
}
