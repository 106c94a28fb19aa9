//! The MCP example policies load without warnings and pass their cases.

use secondkey_policy::PolicyEngine;

#[test]
fn mcp_example_policies_are_clean_and_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    for (dir, tests) in [
        (root.clone(), root.join("mcp.tests.toml")),
        (
            root.join("mcp-arguments"),
            root.join("mcp-arguments/arguments.tests.toml"),
        ),
    ] {
        let e =
            PolicyEngine::load_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        assert!(
            e.warnings().is_empty(),
            "{}: {:?}",
            dir.display(),
            e.warnings()
        );
        let report = secondkey_policy::run_tests(&e, &tests);
        assert!(report.passed(), "{report}");
        assert!(report.cases.len() >= 3);
    }
}
