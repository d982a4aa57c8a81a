//! `swivel lint` and `swivel migrate new` as a user runs them: files on disk, the exit status a
//! CI job reads, the JSON it parses. No server needed.

use std::process::Command;

fn swivel(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swivel"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running swivel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn new_migration_then_lint_it() {
    let dir = std::env::temp_dir().join(format!("swivel-lint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let (code, out, err) = swivel(&["migrate", "new", "Add status to orders"], &dir);
    assert_eq!(code, 0, "{err}");
    let path = dir.join(out.trim());
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with('V') && name.ends_with("__add_status_to_orders.sql"),
        "{name}"
    );
    // A fresh migration is clean: both sections, nothing in them.
    let (code, out, _) = swivel(&["lint", "migrations"], &dir);
    assert_eq!((code, out.as_str()), (0, "0 finding(s)\n"));

    std::fs::write(
        &path,
        "-- +swivel Up\nALTER TABLE orders ADD COLUMN status text NOT NULL;\n\
         -- swivel:lint ignore require-concurrent-index-creation\n\
         CREATE INDEX orders_status ON orders (status);\n",
    )
    .unwrap();
    let (code, out, _) = swivel(&["lint", "migrations", "--format", "json"], &dir);
    assert_eq!(code, 1, "findings fail the job");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    let rules: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, vec!["adding-required-field", "missing-down"]);
    assert_eq!(report["findings"][0]["line"], 2);

    // MySQL's rules and SQL: the index is fine there, the missing DOWN is not.
    let (code, out, _) = swivel(&["lint", "--server", "mysql", path.to_str().unwrap()], &dir);
    assert_eq!(code, 1);
    assert!(
        out.contains("missing-down") && !out.contains("concurrent"),
        "{out}"
    );

    // Bad input: a clear error, nothing linted.
    let (code, _, err) = swivel(&["lint", "nosuch.sql"], &dir);
    assert_ne!(code, 0);
    assert!(err.contains("nosuch.sql does not exist"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
