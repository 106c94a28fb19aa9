//! Statement classification with the real PostgreSQL parser (libpg_query
//! through `pg_query`).
//!
//! Every statement of a query string is parsed and reduced to what policy
//! needs: an operation class, the tables it reads and writes, and the
//! functions it calls. The walk over the parse tree is generic (the whole
//! tree, serialized, is visited), so a table or a function call hidden in
//! a position the classifier has no special case for is still found.
//! Anything the parser rejects is an error, and the caller denies it.
//!
//! Known limits, by design: the classifier sees the statement, not the
//! database's own definitions — a view, rule or trigger that calls a
//! function with side effects runs with the upstream role's rights.

use std::collections::BTreeSet;

use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::{self, ObjectType, VariableSetKind};
use serde::Serialize;
use serde_json::Value;

/// What kind of thing a statement does, from least to most privileged.
/// The order is the severity used to combine several statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Read,
    Write,
    Delete,
    Export,
    Ddl,
    Grant,
    Admin,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Delete => "delete",
            Operation::Export => "export",
            Operation::Ddl => "ddl",
            Operation::Grant => "grant",
            Operation::Admin => "admin",
        }
    }
}

/// A table as written in the statement: the schema is `None` when the name
/// was not qualified (the connection's default schema applies).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Table {
    pub schema: Option<String>,
    pub name: String,
}

impl Table {
    /// `schema.name`, with `default_schema` for an unqualified name —
    /// except names starting with `pg_`, which PostgreSQL looks up in
    /// `pg_catalog` first.
    pub fn qualified(&self, default_schema: &str) -> String {
        let schema = match &self.schema {
            Some(s) => s.as_str(),
            None if self.name.starts_with("pg_") => "pg_catalog",
            None => default_schema,
        };
        format!("{schema}.{}", self.name)
    }

    /// Every table an unqualified name may resolve to: a `pg_` name is
    /// looked up in `pg_catalog` first and, when no such catalog exists,
    /// in the search path — which one runs depends on the database, so
    /// both are named (a policy on either matches).
    pub fn candidates(&self, default_schema: &str) -> Vec<String> {
        let first = self.qualified(default_schema);
        if self.schema.is_none() && self.name.starts_with("pg_") {
            vec![first, format!("{default_schema}.{}", self.name)]
        } else {
            vec![first]
        }
    }
}

/// One top-level statement of a query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// What the statement does, combined (see [`combine`]).
    pub operation: Operation,
    /// Every kind of thing it does.
    pub operations: BTreeSet<Operation>,
    /// The parse node's name, e.g. `SelectStmt`, `CopyStmt`.
    pub command: String,
    pub reads: BTreeSet<Table>,
    pub writes: BTreeSet<Table>,
    /// Every function called, as written (`pg_catalog.` dropped).
    pub functions: BTreeSet<String>,
    /// Functions and operators secondkey does not know; they may have side
    /// effects, so they count as a write.
    pub unknown_functions: BTreeSet<String>,
    /// Names written as a field of a row — `t.f`, `(expr).f` — that are on
    /// none of secondkey's lists. PostgreSQL reads such a name as the call
    /// `f(t)` when the row has no column `f` (attribute notation), so each
    /// may be a call of a function with side effects: the session asks
    /// the database's catalog which of them name functions, and counts
    /// those as unknown functions ([`Classification::calling`]). Names on
    /// the lists are judged here, like any call.
    pub attribute_names: BTreeSet<String>,
    /// What the gateway itself must handle.
    pub special: Special,
    /// The cursor a `FETCH` or `MOVE` runs. A portal bound through the
    /// extended protocol shares the cursors' name space, and fetching from
    /// it runs its statement, so the session checks this name.
    pub portal: Option<String>,
    /// Whether preparing the statement (PostgreSQL's parse analysis, what a
    /// protocol Parse runs) may read a string constant with the input
    /// function of a type that could reach user code: an array, composite
    /// or range value whose element is a domain runs the domain's CHECK.
    /// True for any string constant of an analyzed statement that is not
    /// cast straight to a built-in scalar type (see [`sanitize`]).
    pub literal_input: bool,
    /// Whether the statement names a type that is not built in (a cast, a
    /// column definition, `%TYPE`): its casts, operators and input may be
    /// user code.
    pub foreign_types: bool,
    /// Whether the statement may change which schema an unqualified name
    /// resolves to: SET or RESET of `search_path`, `role` or
    /// `session_authorization`, RESET ALL, a call of `set_config`, a DO
    /// block or a procedure. Names are read with the configured
    /// `default_schema`, which is then no longer known to be right.
    pub moves_names: bool,
}

/// Statements that change the proxy's own view of the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Special {
    None,
    /// `DEALLOCATE name` (`None`: `DEALLOCATE ALL`) or `DISCARD ALL`.
    Deallocate(Option<String>),
}

/// A whole query string, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub statements: Vec<Statement>,
    /// True when the classification does not depend on the value of any
    /// literal, so it may be cached under a key with literals masked.
    pub literal_independent: bool,
}

impl Classification {
    /// Whether a statement may change how unqualified names resolve
    /// ([`Statement::moves_names`]).
    pub fn moves_names(&self) -> bool {
        self.statements.iter().any(|s| s.moves_names)
    }

    /// A table named without a schema, if any statement has one.
    pub fn unqualified_table(&self) -> Option<&str> {
        self.statements
            .iter()
            .flat_map(|s| s.reads.iter().chain(&s.writes))
            .find(|t| t.schema.is_none())
            .map(|t| t.name.as_str())
    }

    /// The operation of the whole query string (see [`combine`]).
    pub fn operation(&self) -> Operation {
        combine(&self.operations())
    }

    /// Every kind of thing the statements do.
    pub fn operations(&self) -> BTreeSet<Operation> {
        self.statements
            .iter()
            .flat_map(|s| s.operations.iter().copied())
            .collect()
    }

    /// Every name of [`Statement::attribute_names`], of all statements.
    pub fn attribute_names(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.attribute_names.iter().cloned())
            .collect()
    }

    /// This classification with the attribute names in `functions` counted
    /// as calls of unknown functions (a write, at least).
    pub fn calling(&self, functions: &BTreeSet<String>) -> Classification {
        let mut out = self.clone();
        for s in &mut out.statements {
            let calls: Vec<String> = s.attribute_names.intersection(functions).cloned().collect();
            if calls.is_empty() {
                continue;
            }
            s.functions.extend(calls.iter().cloned());
            s.unknown_functions.extend(calls);
            s.operations.insert(Operation::Write);
            s.operation = combine(&s.operations);
        }
        out
    }
}

/// One operation class for a set of them. Reading is part of everything;
/// deleting covers writing; any other mix of changes (a delete that is also
/// an export, DDL next to a write, …) is `admin`, so that a policy keyed on
/// one class can never be passed by a statement that also does another.
pub fn combine(ops: &BTreeSet<Operation>) -> Operation {
    let changes: Vec<Operation> = ops
        .iter()
        .copied()
        .filter(|o| *o != Operation::Read)
        .collect();
    match changes.as_slice() {
        [] => Operation::Read,
        [one] => *one,
        [Operation::Write, Operation::Delete] => Operation::Delete,
        _ => Operation::Admin,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClassifyError {
    #[error("the statement could not be parsed: {0}")]
    Parse(String),
    #[error("{0}")]
    Refused(String),
}

/// Extra knowledge from the configuration.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Functions the operator declares free of side effects (besides the
    /// built-in list).
    pub pure_functions: BTreeSet<String>,
}

/// Parses and classifies `sql` (one or more statements).
pub fn classify(sql: &str, opts: &Options) -> Result<Classification, ClassifyError> {
    if sql.contains('\0') {
        return Err(ClassifyError::Parse(
            "the statement contains a NUL byte".into(),
        ));
    }
    // pg_query builds a summary of the tree with a few `panic!`s on shapes
    // it does not expect; a panic is a refusal, never a crash.
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .map_err(|_| ClassifyError::Parse("the parser failed on this statement".into()))?
        .map_err(|e| ClassifyError::Parse(e.to_string()))?;
    let mut out = Classification {
        statements: Vec::new(),
        literal_independent: true,
    };
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        let (stmt, literal_independent) = statement(node, opts)?;
        out.literal_independent &= literal_independent;
        out.statements.push(stmt);
    }
    Ok(out)
}

/// Classifies one top-level statement; the flag says whether the result is
/// independent of literal values.
fn statement(node: &N, opts: &Options) -> Result<(Statement, bool), ClassifyError> {
    let tree = serde_json::to_value(node)
        .map_err(|e| ClassifyError::Parse(format!("cannot inspect the parse tree: {e}")))?;
    let command = match &tree {
        Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    // EXECUTE runs a prepared statement the classifier never sees (one a
    // driver prepared through the protocol shares its name space), wherever
    // it sits: EXPLAIN ANALYZE EXECUTE, CREATE TABLE … AS EXECUTE.
    if has_key(&tree, "ExecuteStmt") || has_key(&tree, "PrepareStmt") {
        return Err(ClassifyError::Refused(
            "PREPARE and EXECUTE in SQL are not supported through secondkey; use your driver's prepared statements (the extended protocol)".into(),
        ));
    }
    let mut w = Walk::new(opts);
    let mut special = Special::None;
    let mut moves_names = matches!(node, N::DoStmt(_) | N::CallStmt(_));
    let mut portal = None;
    let mut literal_independent = false;
    let base = match node {
        N::SelectStmt(_) | N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) => {
            literal_independent = true;
            w.walk(&tree, false);
            Operation::Read
        }
        N::MergeStmt(_) => {
            literal_independent = true;
            w.walk(&tree, false);
            Operation::Write
        }
        N::TransactionStmt(t) => {
            use protobuf::TransactionStmtKind as K;
            // Two-phase commit hands a transaction to (or takes one from)
            // the server beyond this session: an administrator's business.
            match K::try_from(t.kind).unwrap_or(K::Undefined) {
                K::TransStmtPrepare | K::TransStmtCommitPrepared | K::TransStmtRollbackPrepared => {
                    Operation::Admin
                }
                _ => {
                    literal_independent = true;
                    Operation::Read
                }
            }
        }
        N::VariableShowStmt(_) | N::ConstraintsSetStmt(_) | N::ListenStmt(_) => Operation::Read,
        N::UnlistenStmt(_) | N::ClosePortalStmt(_) => Operation::Read,
        N::FetchStmt(f) => {
            portal = Some(f.portalname.clone());
            Operation::Read
        }
        N::NotifyStmt(_) => Operation::Write,
        N::DeallocateStmt(d) => {
            special = Special::Deallocate(if d.isall { None } else { Some(d.name.clone()) });
            Operation::Read
        }
        N::DiscardStmt(d) => {
            // Only DISCARD ALL drops prepared statements; DISCARD PLANS,
            // SEQUENCES and TEMP keep them.
            if d.target == protobuf::DiscardMode::DiscardAll as i32 {
                special = Special::Deallocate(None);
            }
            Operation::Read
        }
        N::VariableSetStmt(s) => {
            let kind = VariableSetKind::try_from(s.kind).unwrap_or(VariableSetKind::Undefined);
            moves_names = kind == VariableSetKind::VarResetAll
                || matches!(
                    s.name.to_ascii_lowercase().as_str(),
                    "search_path" | "role" | "session_authorization"
                );
            variable_set(s)?
        }
        N::CopyStmt(c) => {
            w.walk(&tree, false);
            if let Some(rel) = &c.relation {
                let t = table_of(rel);
                w.reads.remove(&t);
                if c.is_from {
                    w.writes.insert(t);
                } else {
                    w.reads.insert(t);
                }
            }
            if c.is_program || !c.filename.is_empty() {
                // Runs a shell command, or reads/writes a file, on the
                // database server.
                Operation::Admin
            } else if c.is_from {
                Operation::Write
            } else {
                Operation::Export
            }
        }
        N::ExplainStmt(e) => {
            // EXPLAIN ANALYZE executes its statement (a CREATE TABLE AS
            // creates the table): classify it as that statement. A plain
            // EXPLAIN runs nothing, but is classified the same way.
            if let Some(inner) = e.query.as_ref().and_then(|q| q.node.as_ref()) {
                let (s, _) = statement(inner, opts)?;
                w.reads = s.reads;
                w.writes = s.writes;
                w.functions = s.functions;
                w.unknown = s.unknown_functions;
                w.attributes = s.attribute_names;
                w.nested = s.operations;
            }
            Operation::Read
        }
        N::DeclareCursorStmt(_) => {
            w.walk(&tree, false);
            Operation::Read
        }
        N::TruncateStmt(_) => {
            w.walk(&tree, true);
            Operation::Delete
        }
        N::DropStmt(d) => {
            drop_targets(d, &mut w);
            w.walk(&tree, true);
            Operation::Ddl
        }
        N::CreateStmt(_)
        | N::CreateTableAsStmt(_)
        | N::ViewStmt(_)
        | N::IndexStmt(_)
        | N::AlterTableStmt(_)
        | N::RenameStmt(_)
        | N::CommentStmt(_)
        | N::CreateSeqStmt(_)
        | N::AlterSeqStmt(_)
        | N::CreateSchemaStmt(_)
        | N::CreateFunctionStmt(_)
        | N::AlterFunctionStmt(_)
        | N::CreateTrigStmt(_)
        | N::RuleStmt(_)
        | N::CreateDomainStmt(_)
        | N::AlterDomainStmt(_)
        | N::CompositeTypeStmt(_)
        | N::CreateEnumStmt(_)
        | N::AlterEnumStmt(_)
        | N::CreateRangeStmt(_)
        | N::DefineStmt(_)
        | N::AlterObjectSchemaStmt(_)
        | N::CreateStatsStmt(_)
        | N::AlterStatsStmt(_)
        | N::RefreshMatViewStmt(_)
        | N::CreateCastStmt(_)
        | N::CreateOpClassStmt(_)
        | N::AlterOperatorStmt(_)
        | N::AlterTypeStmt(_) => {
            w.walk(&tree, true);
            Operation::Ddl
        }
        N::GrantStmt(_)
        | N::GrantRoleStmt(_)
        | N::CreateRoleStmt(_)
        | N::AlterRoleStmt(_)
        | N::AlterRoleSetStmt(_)
        | N::DropRoleStmt(_)
        | N::AlterDefaultPrivilegesStmt(_)
        | N::AlterOwnerStmt(_)
        | N::ReassignOwnedStmt(_)
        | N::DropOwnedStmt(_)
        | N::CreatePolicyStmt(_)
        | N::AlterPolicyStmt(_)
        | N::SecLabelStmt(_) => {
            w.walk(&tree, true);
            Operation::Grant
        }
        N::CallStmt(_) => {
            // A procedure can do anything its owner can: it is decided as
            // the functions it calls (unknown ones count as writes).
            w.walk(&tree, false);
            Operation::Write
        }
        // DO blocks (arbitrary code), ALTER SYSTEM, LOAD, VACUUM, CHECKPOINT,
        // extensions, databases, tablespaces, replication, foreign servers
        // and anything this list does not name.
        _ => {
            w.walk(&tree, true);
            Operation::Admin
        }
    };
    let literal_input = analyzed(node) && {
        let mut sites = Vec::new();
        literal_sites(&tree, &mut sites);
        !sites.is_empty()
    };
    let foreign_types = names_foreign_type(&tree);
    let mut ops = w.nested;
    ops.insert(base);
    if !w.unknown.is_empty() {
        ops.insert(Operation::Write);
    }
    moves_names |= w
        .functions
        .iter()
        .any(|f| f.rsplit('.').next() == Some("set_config"));
    Ok((
        Statement {
            operation: combine(&ops),
            operations: ops,
            command,
            reads: w.reads,
            writes: w.writes,
            functions: w.functions,
            unknown_functions: w.unknown,
            attribute_names: w.attributes,
            special,
            portal,
            literal_input,
            foreign_types,
            moves_names,
        },
        literal_independent,
    ))
}

/// Statements PostgreSQL analyzes when they are prepared (a Parse
/// message); any other statement is a utility command, analyzed only when
/// it runs.
fn analyzed(node: &N) -> bool {
    matches!(
        node,
        N::SelectStmt(_)
            | N::InsertStmt(_)
            | N::UpdateStmt(_)
            | N::DeleteStmt(_)
            | N::MergeStmt(_)
            | N::ExplainStmt(_)
            | N::DeclareCursorStmt(_)
            | N::CreateTableAsStmt(_)
            | N::CallStmt(_)
    )
}

/// A string constant that parse analysis may hand to a type's input
/// function: the byte offset of the constant and, for the `type 'text'`
/// form, of the type name before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Site {
    at: usize,
    typed_from: Option<usize>,
}

fn location(v: &Value) -> Option<usize> {
    v.get("location")
        .and_then(Value::as_i64)
        .and_then(|n| usize::try_from(n).ok())
}

/// Every string constant below `v` that is not cast straight to a built-in
/// scalar type (whose input function is PostgreSQL's own): an implicit
/// coercion's target is known only after analysis, and may be an array or
/// composite of a domain.
fn literal_sites(v: &Value, out: &mut Vec<Site>) {
    let string_const = |v: &Value| -> Option<usize> {
        let c = v.get("node")?.get("AConst")?;
        c.get("val")?.get("Sval")?;
        location(c).or(Some(usize::MAX))
    };
    match v {
        Value::Object(m) => {
            if let Some(tc) = m.get("TypeCast") {
                let ty = tc.get("type_name").unwrap_or(&Value::Null);
                if let Some(at) = tc.get("arg").and_then(string_const) {
                    if !builtin_type(ty, false) {
                        // `'…'::t` and CAST('…' AS t) carry the cast's own
                        // location; the `t '…'` form carries none.
                        let typed = tc.get("location").and_then(Value::as_i64) == Some(-1);
                        out.push(Site {
                            at,
                            typed_from: if typed { location(ty) } else { None },
                        });
                    }
                    literal_sites(ty, out);
                    return;
                }
            }
            if let Some(c) = m.get("AConst") {
                if c.get("val").and_then(|x| x.get("Sval")).is_some() {
                    out.push(Site {
                        at: location(c).unwrap_or(usize::MAX),
                        typed_from: None,
                    });
                    return;
                }
            }
            m.values().for_each(|x| literal_sites(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| literal_sites(x, out)),
        _ => {}
    }
}

/// Whether any type named below `v` is not built in.
fn names_foreign_type(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            if has(m, &["names", "type_oid", "setof", "pct_type"]) {
                return !builtin_type(v, true);
            }
            m.values().any(names_foreign_type)
        }
        Value::Array(a) => a.iter().any(names_foreign_type),
        _ => false,
    }
}

/// Whether a TypeName names a built-in type: unqualified or in
/// `pg_catalog`, from [`BUILTIN_TYPES`], not `%TYPE`; arrays of one only
/// when `arrays` (array input runs the element's input).
fn builtin_type(ty: &Value, arrays: bool) -> bool {
    let Value::Object(m) = ty else { return false };
    if m.get("pct_type").and_then(Value::as_bool).unwrap_or(false) {
        return false;
    }
    if !arrays
        && m.get("array_bounds")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    {
        return false;
    }
    let names = m.get("names").map(strings_in).unwrap_or_default();
    match names.as_slice() {
        [name] => BUILTIN_TYPES.contains(&name.as_str()),
        [schema, name] => schema == "pg_catalog" && BUILTIN_TYPES.contains(&name.as_str()),
        _ => false,
    }
}

/// Built-in scalar types (as the parser names them: `integer` is `int4`,
/// `timestamp with time zone` is `pg_catalog.timestamptz`) whose input
/// functions are PostgreSQL's own and read no other type's input.
const BUILTIN_TYPES: &[&str] = &[
    "bool",
    "boolean",
    "int2",
    "int4",
    "int8",
    "smallint",
    "integer",
    "int",
    "bigint",
    "numeric",
    "decimal",
    "float4",
    "float8",
    "real",
    "text",
    "varchar",
    "bpchar",
    "char",
    "name",
    "character",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "jsonpath",
    "bytea",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "money",
    "bit",
    "varbit",
    "oid",
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regoper",
    "regoperator",
    "regnamespace",
    "regrole",
    "regconfig",
    "regdictionary",
    "tsvector",
    "tsquery",
    "point",
    "line",
    "lseg",
    "box",
    "path",
    "polygon",
    "circle",
    "pg_lsn",
    "xml",
];

/// For a Parse of `sql` that may run a type's input on a string constant
/// ([`Statement::literal_input`]): the same statement with every such
/// constant replaced by `NULL` (`t '…'` by `CAST(NULL AS t)`). A NULL of
/// unknown type is resolved exactly like a string constant, so the server
/// infers the same parameter and result types from it, but no input
/// function reads anything. `None` when that text cannot be built and
/// checked (the caller then keeps the Parse back).
pub fn sanitize(sql: &str) -> Option<String> {
    let sites = sites_of(sql)?;
    if sites.is_empty() {
        return Some(sql.to_string());
    }
    let tokens = pg_query::scan(sql).ok()?.tokens;
    let string_token = |t: &protobuf::ScanToken| {
        matches!(
            protobuf::Token::try_from(t.token),
            Ok(protobuf::Token::Sconst) | Ok(protobuf::Token::Usconst)
        )
    };
    let by_start: std::collections::HashMap<usize, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.start as usize, i))
        .collect();
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for site in sites {
        let i = *by_start.get(&site.at)?;
        let tok = &tokens[i];
        if !string_token(tok) {
            // A constant the grammar made from a keyword (EXTRACT's field,
            // IS NORMALIZED's form): its value is fixed, its type text.
            continue;
        }
        let mut end = tok.end as usize;
        if protobuf::Token::try_from(tok.token) == Ok(protobuf::Token::Usconst) {
            if let (Some(u), Some(c)) = (tokens.get(i + 1), tokens.get(i + 2)) {
                if protobuf::Token::try_from(u.token) == Ok(protobuf::Token::Uescape)
                    && string_token(c)
                {
                    end = c.end as usize;
                }
            }
        }
        let (start, with) = match site.typed_from {
            Some(from) if from < site.at => {
                let ty = sql.get(from..site.at)?.trim_end();
                (from, format!("CAST(NULL AS {ty})"))
            }
            Some(_) => return None,
            None => (site.at, "NULL".to_string()),
        };
        sql.get(start..end)?;
        edits.push((start, end, with));
    }
    edits.sort();
    if edits.windows(2).any(|w| w[0].1 > w[1].0) {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for (start, end, with) in &edits {
        out.push_str(sql.get(at..*start)?);
        out.push_str(with);
        at = *end;
    }
    out.push_str(sql.get(at..)?);
    // The result must parse into as many statements, with no string
    // constant left for an input function to read.
    let before = pg_query::parse(sql, 0).ok()?.protobuf.stmts.len();
    let after = pg_query::parse(&out, 0).ok()?.protobuf.stmts.len();
    if before != after {
        return None;
    }
    let left = sites_of(&out)?;
    let strings: std::collections::HashSet<usize> = pg_query::scan(&out)
        .ok()?
        .tokens
        .iter()
        .filter(|t| string_token(t))
        .map(|t| t.start as usize)
        .collect();
    (!left.iter().any(|s| strings.contains(&s.at))).then_some(out)
}

/// The literal sites of every analyzed statement of `sql`.
fn sites_of(sql: &str) -> Option<Vec<Site>> {
    if sql.contains('\0') {
        return None;
    }
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .ok()?
        .ok()?;
    let mut sites = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        if analyzed(node) {
            let tree = serde_json::to_value(node).ok()?;
            literal_sites(&tree, &mut sites);
        }
    }
    Some(sites)
}

/// `SET name …`: harmless session settings are reads; anything that
/// changes identity, name resolution, how the parser reads text, or logging
/// is admin; encodings and string syntax the classifier could misread are
/// refused.
fn variable_set(s: &protobuf::VariableSetStmt) -> Result<Operation, ClassifyError> {
    let kind = VariableSetKind::try_from(s.kind).unwrap_or(VariableSetKind::Undefined);
    if kind == VariableSetKind::VarResetAll {
        return Ok(Operation::Read);
    }
    let name = s.name.to_ascii_lowercase();
    let values: Vec<String> = s
        .args
        .iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .flat_map(|v| constants_in(&v))
        .collect();
    match name.as_str() {
        "client_encoding" => {
            let ok = kind != VariableSetKind::VarSetValue
                || (!values.is_empty()
                    && values.iter().all(|v| {
                        matches!(
                            v.to_ascii_lowercase().replace(['-', '_'], "").as_str(),
                            "utf8" | "unicode"
                        )
                    }));
            if ok {
                Ok(Operation::Read)
            } else {
                Err(ClassifyError::Refused(
                    "only UTF8 is passed as client_encoding (statements are classified as UTF-8)"
                        .into(),
                ))
            }
        }
        "standard_conforming_strings" | "backslash_quote" => {
            let safe = |v: &String| {
                let v = v.to_ascii_lowercase();
                if name == "backslash_quote" {
                    matches!(v.as_str(), "off" | "false" | "0" | "no" | "safe_encoding")
                } else {
                    matches!(v.as_str(), "on" | "true" | "1" | "yes")
                }
            };
            let ok = kind != VariableSetKind::VarSetValue
                || (!values.is_empty() && values.iter().all(safe));
            if ok {
                Ok(Operation::Read)
            } else {
                Err(ClassifyError::Refused(format!(
                    "{name} cannot be changed through secondkey: it changes how statements are parsed"
                )))
            }
        }
        n if HARMLESS_SETTINGS.contains(&n) || n.starts_with("enable_") => Ok(Operation::Read),
        _ => Ok(Operation::Admin),
    }
}

/// Settings that change neither identity, name resolution, parsing, nor
/// logging.
const HARMLESS_SETTINGS: &[&str] = &[
    "application_name",
    "client_min_messages",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "work_mem",
    "maintenance_work_mem",
    "bytea_output",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "transaction",
    "session characteristics",
    "jit",
    "random_page_cost",
    "seq_page_cost",
    "cpu_tuple_cost",
    "effective_cache_size",
    "geqo",
    "plan_cache_mode",
    "max_parallel_workers_per_gather",
    "synchronous_commit",
    "xmloption",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "array_nulls",
    "default_with_oids",
];

fn drop_targets(d: &protobuf::DropStmt, w: &mut Walk) {
    let ty = ObjectType::try_from(d.remove_type).unwrap_or(ObjectType::Undefined);
    let tables = matches!(
        ty,
        ObjectType::ObjectTable
            | ObjectType::ObjectView
            | ObjectType::ObjectMatview
            | ObjectType::ObjectIndex
            | ObjectType::ObjectSequence
            | ObjectType::ObjectForeignTable
    );
    if !tables {
        return;
    }
    for o in &d.objects {
        let Some(N::List(list)) = &o.node else {
            continue;
        };
        let names: Vec<&str> = list
            .items
            .iter()
            .filter_map(|i| match &i.node {
                Some(N::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })
            .collect();
        if let Some((name, rest)) = names.split_last() {
            w.writes.insert(Table {
                schema: rest.last().map(|s| s.to_string()),
                name: name.to_string(),
            });
        }
    }
}

fn table_of(r: &protobuf::RangeVar) -> Table {
    Table {
        schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
        name: r.relname.clone(),
    }
}

/// All `sval` strings below `v`, in order (the parts of a qualified name).
fn strings_in(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn go(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match x {
                        Value::String(s) if k == "sval" => out.push(s.clone()),
                        _ => go(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| go(x, out)),
            _ => {}
        }
    }
    go(v, &mut out);
    out
}

/// The values of the constants below `v` (strings, numbers, booleans), as
/// text.
fn constants_in(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn go(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let constant =
                        matches!(k.as_str(), "sval" | "ival" | "fval" | "boolval" | "bsval");
                    match x {
                        Value::String(s) if constant => out.push(s.clone()),
                        Value::Number(n) if constant => out.push(n.to_string()),
                        Value::Bool(b) if constant => out.push(b.to_string()),
                        _ => go(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| go(x, out)),
            _ => {}
        }
    }
    go(v, &mut out);
    out
}

/// The generic tree walk: every object of the serialized tree is visited;
/// nodes are recognized by their fields (serde writes every field of a
/// message, so a recognized node is never missed, whether it sits in a
/// `Node` wrapper or in a typed field).
struct Walk<'a> {
    opts: &'a Options,
    reads: BTreeSet<Table>,
    writes: BTreeSet<Table>,
    functions: BTreeSet<String>,
    unknown: BTreeSet<String>,
    /// See [`Statement::attribute_names`].
    attributes: BTreeSet<String>,
    /// Operations found in nested statements and calls (writing CTEs,
    /// SELECT … INTO, FOR UPDATE, side-effect functions).
    nested: BTreeSet<Operation>,
    /// CTE names in scope, innermost last.
    scopes: Vec<Vec<String>>,
}

/// Whether a node of type `name` (an object key) appears anywhere in `v`.
/// Keys are node and field names; what a statement spells (identifiers,
/// literals) only ever appears as values.
fn has_key(v: &Value, name: &str) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, x)| k == name || has_key(x, name)),
        Value::Array(a) => a.iter().any(|x| has_key(x, name)),
        _ => false,
    }
}

fn has(m: &serde_json::Map<String, Value>, keys: &[&str]) -> bool {
    keys.iter().all(|k| m.contains_key(*k))
}

impl<'a> Walk<'a> {
    fn new(opts: &'a Options) -> Self {
        Walk {
            opts,
            reads: BTreeSet::new(),
            writes: BTreeSet::new(),
            functions: BTreeSet::new(),
            unknown: BTreeSet::new(),
            attributes: BTreeSet::new(),
            nested: BTreeSet::new(),
            scopes: Vec::new(),
        }
    }

    fn is_cte(&self, t: &Table) -> bool {
        t.schema.is_none() && self.scopes.iter().any(|s| s.contains(&t.name))
    }

    fn range_var(&mut self, m: &serde_json::Map<String, Value>, target: bool) {
        let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let t = Table {
            schema: Some(s("schemaname")).filter(|x| !x.is_empty()),
            name: s("relname"),
        };
        // PostgreSQL never resolves what a statement changes against the
        // CTEs in scope: `WITH t AS (…) DELETE FROM t` deletes from table t.
        if !target && self.is_cte(&t) {
            return;
        }
        if target {
            self.writes.insert(t);
        } else {
            self.reads.insert(t);
        }
    }

    /// Visits `v`. `target` is true while outside any query inside a
    /// utility statement: relations there are what the statement changes.
    fn walk(&mut self, v: &Value, target: bool) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| self.walk(x, target)),
            Value::Object(m) => self.object(m, target),
            _ => {}
        }
    }

    fn object(&mut self, m: &serde_json::Map<String, Value>, target: bool) {
        // RangeVar: a table (or view, or CTE reference).
        if has(m, &["relname", "relpersistence", "schemaname"]) {
            self.range_var(m, target);
            return;
        }
        // WITH: scope the CTE names (non-recursive CTEs see only earlier
        // siblings, recursive ones all), then the rest of the statement.
        if let Some(Value::Object(with)) = m.get("with_clause") {
            let ctes: Vec<&Value> = with
                .get("ctes")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let recursive = with
                .get("recursive")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let names: Vec<String> = ctes
                .iter()
                .map(|c| {
                    strings_named(c, "ctename")
                        .into_iter()
                        .next()
                        .unwrap_or_default()
                })
                .collect();
            for (i, c) in ctes.iter().enumerate() {
                let visible = if recursive {
                    names.clone()
                } else {
                    names[..i].to_vec()
                };
                self.scopes.push(visible);
                self.walk(c, false);
                self.scopes.pop();
            }
            self.scopes.push(names);
            let mut rest = m.clone();
            rest.remove("with_clause");
            self.object(&rest, target);
            self.scopes.pop();
            return;
        }
        // Data-modifying statements anywhere (top level or in a CTE).
        let dml = if has(m, &["select_stmt", "on_conflict_clause", "relation"]) {
            Some(Operation::Write)
        } else if has(m, &["relation", "using_clause", "where_clause"]) {
            Some(Operation::Delete)
        } else if has(
            m,
            &["relation", "target_list", "from_clause", "where_clause"],
        ) {
            Some(Operation::Write)
        } else if has(m, &["relation", "source_relation", "merge_when_clauses"]) {
            let deletes = m
                .get("merge_when_clauses")
                .map(|c| {
                    numbers_named(c, "command_type")
                        .contains(&(protobuf::CmdType::CmdDelete as i64))
                })
                .unwrap_or(false);
            Some(if deletes {
                Operation::Delete
            } else {
                Operation::Write
            })
        } else {
            None
        };
        if let Some(op) = dml {
            self.nested.insert(op);
            for (k, x) in m {
                if k == "relation" {
                    if let Value::Object(r) = x {
                        self.range_var(r, true);
                    }
                } else {
                    self.walk(x, false);
                }
            }
            return;
        }
        // SELECT … INTO creates a table; FOR UPDATE/SHARE locks rows.
        if has(m, &["into_clause", "locking_clause", "target_list"]) {
            if let Some(Value::Object(into)) = m.get("into_clause") {
                if let Some(Value::Object(rel)) = into.get("rel") {
                    self.nested.insert(Operation::Ddl);
                    self.range_var(rel, true);
                }
            }
            if m.get("locking_clause")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                self.nested.insert(Operation::Write);
            }
            for (k, x) in m {
                if k != "into_clause" {
                    self.walk(x, false);
                }
            }
            return;
        }
        // A function call.
        if has(m, &["funcname", "agg_star", "args"]) {
            let name = qualified_name(m.get("funcname"));
            self.function(&name);
        }
        // A column reference `a.b` (ColumnRef, the only node with
        // `fields`) and a field selection `(x).b` (A_Indirection): `b` may
        // be a call b(a) in attribute notation.
        if let Some(Value::Array(fields)) = m.get("fields") {
            if fields.len() >= 2 {
                if let Some(name) = fields.last().and_then(string_node) {
                    self.attribute(name);
                }
            }
        }
        if has(m, &["arg", "indirection"]) {
            if let Some(Value::Array(ind)) = m.get("indirection") {
                for name in ind.iter().filter_map(string_node) {
                    self.attribute(name);
                }
            }
        }
        // An operator: user-defined ones run functions of their own (also
        // in `x op ANY (subquery)` and `ORDER BY x USING op`).
        if has(m, &["kind", "name", "lexpr", "rexpr"]) {
            self.operator(qualified_name(m.get("name")));
        }
        if has(m, &["sub_link_type", "oper_name"]) {
            self.operator(qualified_name(m.get("oper_name")));
        }
        if has(m, &["sortby_dir", "use_op"]) {
            self.operator(qualified_name(m.get("use_op")));
        }
        for x in m.values() {
            self.walk(x, target && !is_query(x));
        }
    }

    fn operator(&mut self, name: String) {
        if !name.is_empty() && !known_operator(&name) {
            self.unknown.insert(format!("operator {name}"));
        }
    }

    /// A name that may be a call in attribute notation (see
    /// [`Statement::attribute_names`]).
    fn attribute(&mut self, name: &str) {
        if let Some(op) = function_op(name) {
            self.functions.insert(name.to_string());
            self.nested.insert(op);
        } else if !PURE_FUNCTIONS.contains(&name) && !self.opts.pure_functions.contains(name) {
            self.attributes.insert(name.to_string());
        }
    }

    /// A function called by `name` as written. What it does is judged by
    /// its last part in any schema (a copy of an admin function under
    /// another schema, or the catalog's own under a database-qualified
    /// name, is still one); it is taken as free of side effects only when
    /// it names the built-in function (unqualified or in `pg_catalog`).
    fn function(&mut self, name: &str) {
        let short = name.strip_prefix("pg_catalog.").unwrap_or(name);
        self.functions.insert(short.to_string());
        let last = name.rsplit('.').next().unwrap_or(name);
        if let Some(op) = function_op(last) {
            self.nested.insert(op);
        } else {
            let pure = (!short.contains('.') && PURE_FUNCTIONS.contains(&short))
                || self.opts.pure_functions.contains(short);
            if !pure {
                self.unknown.insert(short.to_string());
            }
        }
    }
}

/// Whether `v` is (a wrapper of) a query, below which relations are read.
fn is_query(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            m.contains_key("SelectStmt")
                || has(m, &["target_list", "from_clause"])
                || m.get("node").is_some_and(is_query)
        }
        _ => false,
    }
}

fn strings_named(v: &Value, key: &str) -> Vec<String> {
    match v {
        Value::Object(m) => {
            let mut out = Vec::new();
            for (k, x) in m {
                if k == key {
                    if let Value::String(s) = x {
                        out.push(s.clone());
                    }
                } else {
                    out.extend(strings_named(x, key));
                }
            }
            out
        }
        Value::Array(a) => a.iter().flat_map(|x| strings_named(x, key)).collect(),
        _ => Vec::new(),
    }
}

fn numbers_named(v: &Value, key: &str) -> Vec<i64> {
    match v {
        Value::Object(m) => m
            .iter()
            .flat_map(|(k, x)| match x {
                Value::Number(n) if k == key => n.as_i64().into_iter().collect(),
                _ => numbers_named(x, key),
            })
            .collect(),
        Value::Array(a) => a.iter().flat_map(|x| numbers_named(x, key)).collect(),
        _ => Vec::new(),
    }
}

/// The text of a String node (`{"node": {"String": {"sval": …}}}`).
fn string_node(v: &Value) -> Option<&str> {
    v.get("node")?.get("String")?.get("sval")?.as_str()
}

fn qualified_name(v: Option<&Value>) -> String {
    v.map(strings_in).unwrap_or_default().join(".")
}

/// What calling the function `name` (unqualified) does, when it is on
/// secondkey's lists of functions with effects.
fn function_op(name: &str) -> Option<Operation> {
    if ADMIN_FUNCTIONS.contains(&name)
        || name.starts_with("dblink")
        || name.starts_with("pg_replication_origin")
        || name.starts_with("pg_stat_reset")
        || name.starts_with("pg_file_")
        || name.starts_with("pg_ls_")
        || name.ends_with("_to_xml")
        || name.ends_with("_to_xmlschema")
        || name.ends_with("_to_xml_and_xmlschema")
        || name.starts_with("lo_")
        || name.starts_with("pg_logical_")
    {
        return Some(Operation::Admin);
    }
    if WRITE_FUNCTIONS.contains(&name) || name.starts_with("pg_advisory") {
        return Some(Operation::Write);
    }
    None
}

/// Functions that read server files, run queries given as text, signal
/// other sessions, change settings, move large objects or control the
/// server.
const ADMIN_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_logdir_ls",
    "loread",
    "lowrite",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "set_config",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_promote",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_import_system_collations",
    "pg_stat_statements_reset",
    "ts_stat",
    // ts_rewrite(tsquery, text) runs its text as a query (the form with
    // three tsquery arguments does not; both are counted).
    "ts_rewrite",
    "query_to_xml",
    "cursor_to_xml",
    "xpath_table",
    "pg_sleep_for",
    "pg_sleep_until",
];

const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
];

/// Built-in functions without side effects.
const PURE_FUNCTIONS: &[&str] = &[
    // aggregates and window functions
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "row_number",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    "cume_dist",
    "percent_rank",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_slope",
    "regr_intercept",
    "bit_and",
    "bit_or",
    // strings
    "lower",
    "upper",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substring",
    "substr",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "concat",
    "concat_ws",
    "replace",
    "split_part",
    "position",
    "strpos",
    "left",
    "right",
    "lpad",
    "rpad",
    "repeat",
    "reverse",
    "initcap",
    "format",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "encode",
    "decode",
    "to_hex",
    "regexp_replace",
    "regexp_matches",
    "regexp_match",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_like",
    "regexp_count",
    "regexp_instr",
    "regexp_substr",
    "starts_with",
    "translate",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "ascii",
    "chr",
    "overlay",
    "string_to_array",
    "array_to_string",
    "unistr",
    "normalize",
    "convert_from",
    "convert_to",
    // numbers
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "sqrt",
    "cbrt",
    "power",
    "pow",
    "exp",
    "ln",
    "log",
    "log10",
    "mod",
    "sign",
    "div",
    "pi",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "width_bucket",
    "random",
    "setseed",
    "gcd",
    "lcm",
    "factorial",
    "scale",
    "numeric",
    "float8",
    "int4",
    "int8",
    "text",
    // dates and times
    "now",
    "date_trunc",
    "date_part",
    "extract",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    "age",
    "make_date",
    "make_time",
    "make_interval",
    "make_timestamp",
    "make_timestamptz",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "date_bin",
    "isfinite",
    "timezone",
    "date_add",
    "date_subtract",
    // json
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "to_json",
    "to_jsonb",
    "row_to_json",
    "array_to_json",
    "json_extract_path",
    "jsonb_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path_text",
    "jsonb_set",
    "jsonb_set_lax",
    "jsonb_insert",
    "json_array_length",
    "jsonb_array_length",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_object_keys",
    "jsonb_object_keys",
    "json_typeof",
    "jsonb_typeof",
    "jsonb_pretty",
    "jsonb_strip_nulls",
    "json_strip_nulls",
    "jsonb_path_query",
    "jsonb_path_exists",
    "jsonb_path_match",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "json_object",
    "jsonb_object",
    "json_populate_record",
    "jsonb_populate_record",
    "json_to_record",
    "jsonb_to_record",
    "json_to_recordset",
    "jsonb_to_recordset",
    // arrays and sets
    "array_length",
    "cardinality",
    "unnest",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_position",
    "array_positions",
    "array_remove",
    "array_replace",
    "array_dims",
    "array_lower",
    "array_upper",
    "array_ndims",
    "array_fill",
    "generate_series",
    "generate_subscripts",
    "trim_array",
    // information
    "version",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "pg_typeof",
    "format_type",
    "pg_backend_pid",
    "pg_postmaster_start_time",
    "gen_random_uuid",
    "has_table_privilege",
    "has_schema_privilege",
    "has_column_privilege",
    "has_database_privilege",
    "has_function_privilege",
    "pg_has_role",
    "pg_get_viewdef",
    "pg_get_indexdef",
    "pg_get_constraintdef",
    "pg_get_functiondef",
    "pg_get_expr",
    "pg_get_userbyid",
    "pg_table_size",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_indexes_size",
    "pg_size_pretty",
    "pg_database_size",
    "obj_description",
    "col_description",
    "shobj_description",
    "to_regclass",
    "to_regtype",
    "to_regproc",
    "pg_table_is_visible",
    "pg_type_is_visible",
    "pg_function_is_visible",
    "pg_is_in_recovery",
    "pg_encoding_to_char",
    "pg_get_keywords",
    "inet_server_addr",
    "inet_server_port",
    "pg_sleep",
    "pg_column_size",
    "txid_current_if_assigned",
    "pg_current_wal_lsn",
    "pg_last_wal_replay_lsn",
    "pg_get_serial_sequence",
    "pg_get_partkeydef",
    "pg_relation_filenode",
    "pg_char_to_encoding",
    "row",
    "exists",
    // text search and misc
    "to_tsvector",
    "to_tsquery",
    "plainto_tsquery",
    "phraseto_tsquery",
    "websearch_to_tsquery",
    "ts_rank",
    "ts_rank_cd",
    "ts_headline",
    "setweight",
    "string_to_table",
    "num_nulls",
    "num_nonnulls",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "uuid_generate_v4",
    "crypt",
    "gen_salt",
    "digest",
    "hmac",
];

/// Built-in operators (and the names the grammar gives LIKE, BETWEEN, …).
fn known_operator(name: &str) -> bool {
    let op = name.strip_prefix("pg_catalog.").unwrap_or(name);
    matches!(
        op,
        "=" | "<>"
            | "!="
            | "<"
            | ">"
            | "<="
            | ">="
            | "+"
            | "-"
            | "*"
            | "/"
            | "%"
            | "^"
            | "||"
            | "~"
            | "~*"
            | "!~"
            | "!~*"
            | "~~"
            | "~~*"
            | "!~~"
            | "!~~*"
            | "@>"
            | "<@"
            | "&&"
            | "?"
            | "?|"
            | "?&"
            | "->"
            | "->>"
            | "#>"
            | "#>>"
            | "#-"
            | "@@"
            | "@?"
            | "|/"
            | "||/"
            | "@"
            | "&"
            | "|"
            | "#"
            | "<<"
            | ">>"
            | "<->"
            | "<<="
            | ">>="
            | "-|-"
            | "&<"
            | "&>"
            | "BETWEEN"
            | "NOT BETWEEN"
            | "BETWEEN SYMMETRIC"
            | "NOT BETWEEN SYMMETRIC"
            | "!"
    )
}

#[cfg(test)]
mod tests;
