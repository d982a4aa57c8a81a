//! `swivel lint`: the dangerous operations in SQL files and migrations, each with a stable rule
//! name and the safe way to do it. `-- swivel:lint ignore RULE` right above a statement
//! suppresses that rule there (`missing-down`: above the file's first statement).

pub mod rules;

use std::path::{Path, PathBuf};

use serde::Serialize;
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

use crate::error::{Error, Result};
use crate::migrations::files::{self, Section};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    Postgres,
    Mysql,
}

impl Server {
    pub fn parse(s: &str) -> Result<Server> {
        match s {
            "postgres" | "postgresql" => Ok(Server::Postgres),
            "mysql" | "mariadb" => Ok(Server::Mysql),
            other => Err(Error::refused(format!(
                "--server {other}: give postgres or mysql"
            ))),
        }
    }

    pub fn dialect(self) -> Box<dyn Dialect> {
        match self {
            Server::Postgres => Box::new(PostgreSqlDialect {}),
            Server::Mysql => Box::new(MySqlDialect {}),
        }
    }
}

/// One finding: where, which rule, what is wrong and what to do.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub file: String,
    pub line: u64,
    pub rule: &'static str,
    pub message: &'static str,
    pub help: &'static str,
    pub statement: String,
}

/// What linting found, and the statements it could not read (linted by no rule).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub unparsed: Vec<Unparsed>,
}

#[derive(Debug, Serialize)]
pub struct Unparsed {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

/// Lint every `.sql` file in `paths` (files, or directories one level deep).
pub fn lint_paths(paths: &[PathBuf], server: Server) -> Result<Report> {
    let mut report = Report::default();
    for file in files::sql_files(paths)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::refused(format!("reading {}: {e}", file.display())))?;
        lint_text(&file, &text, server, &mut report)?;
    }
    Ok(report)
}

/// Lint one file's text into `report`.
pub fn lint_text(file: &Path, text: &str, server: Server, report: &mut Report) -> Result<()> {
    let dialect = server.dialect();
    let script = files::split(dialect.as_ref(), text)
        .map_err(|e| Error::refused(format!("{}: {e}", file.display())))?;
    let name = file.display().to_string();
    let mut push = |line: u64, rule: &'static str, statement: &str, ignored: &[String]| {
        if ignores(ignored, rule) {
            return;
        }
        if let Some(r) = rules::rule(rule) {
            report.findings.push(Finding {
                file: name.clone(),
                line,
                rule: r.name,
                message: r.message,
                help: r.help,
                statement: statement.to_string(),
            });
        }
    };
    let mut in_transaction = false;
    let mut unparsed = Vec::new();
    for st in &script.statements {
        let parsed = match Parser::parse_sql(dialect.as_ref(), &st.sql) {
            Ok(mut s) if s.len() == 1 => s.remove(0),
            Ok(_) => continue,
            Err(e) => {
                unparsed.push(Unparsed {
                    file: name.clone(),
                    line: st.line,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        match parsed {
            sqlparser::ast::Statement::StartTransaction { .. } => in_transaction = true,
            sqlparser::ast::Statement::Commit { .. }
            | sqlparser::ast::Statement::Rollback { .. } => in_transaction = false,
            _ => {}
        }
        if st.section == Section::Up {
            for rule in rules::check(&parsed, server, in_transaction) {
                push(st.line, rule, &st.sql, &st.comments);
            }
        } else if rules::check(&parsed, server, in_transaction)
            .iter()
            .any(|r| matches!(*r, "ban-drop-table" | "ban-drop-column"))
        {
            // What the drop rules find in an Up loses data in a Down.
            push(st.line, "down-loses-data", &st.sql, &st.comments);
        }
    }
    // A migration (a file with sections) must say how to undo itself.
    if script.has_markers && !script.has_down {
        let above_up = script
            .statements
            .first()
            .map(|s| s.comments.clone())
            .unwrap_or_default();
        push(1, "missing-down", "", &above_up);
    }
    report.unparsed.extend(unparsed);
    Ok(())
}

/// `-- swivel:lint ignore RULE[, RULE]` among the comments right above a statement.
fn ignores(comments: &[String], rule: &str) -> bool {
    comments.iter().any(|c| {
        c.strip_prefix("swivel:lint ignore")
            .is_some_and(|rest| rest.split([',', ' ']).any(|r| r.trim() == rule))
    })
}

/// The report as text: one block per finding, then what could not be read.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        out.push_str(&format!(
            "{}:{}: {}: {}\n  statement: {}\n  instead: {}\n",
            f.file,
            f.line,
            f.rule,
            f.message,
            one_line(&f.statement),
            f.help
        ));
    }
    for u in &report.unparsed {
        out.push_str(&format!(
            "{}:{}: not linted: swivel's parser cannot read this statement ({})\n",
            u.file, u.line, u.reason
        ));
    }
    out.push_str(&format!(
        "{} finding(s){}\n",
        report.findings.len(),
        if report.unparsed.is_empty() {
            String::new()
        } else {
            format!(", {} statement(s) not linted", report.unparsed.len())
        }
    ));
    out
}

fn one_line(sql: &str) -> String {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 100 {
        format!("{}…", flat.chars().take(100).collect::<String>())
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(server: Server, text: &str) -> Vec<&'static str> {
        let mut report = Report::default();
        lint_text(Path::new("m.sql"), text, server, &mut report).unwrap();
        assert!(report.unparsed.is_empty(), "{:?}", report.unparsed);
        report.findings.iter().map(|f| f.rule).collect()
    }

    fn pg(text: &str) -> Vec<&'static str> {
        lint(Server::Postgres, text)
    }

    fn my(text: &str) -> Vec<&'static str> {
        lint(Server::Mysql, text)
    }

    /// Each rule: a statement that breaks it, and the safe one that does not.
    #[test]
    fn every_rule_has_a_positive_and_a_negative_case() {
        let cases: &[(&str, Server, &str, &str)] = &[
            (
                "adding-required-field",
                Server::Postgres,
                "ALTER TABLE t ADD COLUMN s int NOT NULL",
                "ALTER TABLE t ADD COLUMN s int NOT NULL DEFAULT 0",
            ),
            (
                "adding-field-with-default",
                Server::Postgres,
                "ALTER TABLE t ADD COLUMN s timestamptz DEFAULT now()",
                "ALTER TABLE t ADD COLUMN s text DEFAULT 'new'",
            ),
            (
                "changing-column-type",
                Server::Postgres,
                "ALTER TABLE t ALTER COLUMN k TYPE bigint",
                "ALTER TABLE t ALTER COLUMN k SET DEFAULT 0",
            ),
            (
                "changing-column-type",
                Server::Mysql,
                "ALTER TABLE t MODIFY k BIGINT NOT NULL",
                "ALTER TABLE t ALTER COLUMN k SET DEFAULT 0",
            ),
            (
                "ban-drop-column",
                Server::Mysql,
                "ALTER TABLE t DROP COLUMN k",
                "ALTER TABLE t ADD COLUMN k2 int",
            ),
            (
                "ban-drop-table",
                Server::Postgres,
                "DROP TABLE t",
                "DROP VIEW v",
            ),
            (
                "renaming-column",
                Server::Postgres,
                "ALTER TABLE t RENAME COLUMN a TO b",
                "ALTER TABLE t ADD COLUMN b int",
            ),
            (
                "renaming-column",
                Server::Mysql,
                "ALTER TABLE t CHANGE a b INT",
                "ALTER TABLE t ADD COLUMN b INT",
            ),
            (
                "renaming-table",
                Server::Postgres,
                "ALTER TABLE t RENAME TO u",
                "CREATE VIEW u AS SELECT * FROM t",
            ),
            (
                "renaming-table",
                Server::Mysql,
                "RENAME TABLE t TO u",
                "CREATE TABLE u (id BIGINT PRIMARY KEY)",
            ),
            (
                "adding-not-nullable-field",
                Server::Postgres,
                "ALTER TABLE t ALTER COLUMN k SET NOT NULL",
                "ALTER TABLE t ADD CONSTRAINT k_nn CHECK (k IS NOT NULL) NOT VALID",
            ),
            (
                "adding-foreign-key-constraint",
                Server::Postgres,
                "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES u (id)",
                "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES u (id) NOT VALID",
            ),
            (
                "constraint-missing-not-valid",
                Server::Postgres,
                "ALTER TABLE t ADD CONSTRAINT c CHECK (k > 0)",
                "ALTER TABLE t ADD CONSTRAINT c CHECK (k > 0) NOT VALID",
            ),
            (
                "disallowed-unique-constraint",
                Server::Postgres,
                "ALTER TABLE t ADD CONSTRAINT u UNIQUE (k)",
                "CREATE UNIQUE INDEX CONCURRENTLY u ON t (k)",
            ),
            (
                "require-concurrent-index-creation",
                Server::Postgres,
                "CREATE INDEX i ON t (k)",
                "CREATE INDEX CONCURRENTLY i ON t (k)",
            ),
            (
                "require-concurrent-index-deletion",
                Server::Postgres,
                "DROP INDEX i",
                // sqlparser does not read DROP INDEX CONCURRENTLY (it is listed as unparsed).
                "DROP VIEW i",
            ),
            (
                "ban-concurrent-index-creation-in-transaction",
                Server::Postgres,
                "BEGIN; CREATE INDEX CONCURRENTLY i ON t (k); COMMIT",
                "CREATE INDEX CONCURRENTLY i ON t (k)",
            ),
            (
                "renaming-enum-value",
                Server::Postgres,
                "ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'",
                "ALTER TYPE mood ADD VALUE 'calm'",
            ),
            (
                "prefer-bigint-over-int",
                Server::Postgres,
                "CREATE TABLE t (id serial PRIMARY KEY, k int)",
                "CREATE TABLE t (id bigserial PRIMARY KEY, k int)",
            ),
            (
                "prefer-bigint-over-int",
                Server::Mysql,
                "CREATE TABLE t (id INT AUTO_INCREMENT, PRIMARY KEY (id))",
                "CREATE TABLE t (id BIGINT AUTO_INCREMENT, PRIMARY KEY (id))",
            ),
            (
                "ban-char-field",
                Server::Mysql,
                "CREATE TABLE t (id BIGINT PRIMARY KEY, c CHAR(8))",
                "CREATE TABLE t (id BIGINT PRIMARY KEY, c VARCHAR(8))",
            ),
            (
                "prefer-bigint-over-smallint",
                Server::Mysql,
                "CREATE TABLE t (id SMALLINT PRIMARY KEY)",
                "CREATE TABLE t (id BIGINT PRIMARY KEY)",
            ),
            (
                "prefer-identity",
                Server::Postgres,
                "ALTER TABLE t ADD COLUMN n bigserial",
                "ALTER TABLE t ADD COLUMN n bigint GENERATED BY DEFAULT AS IDENTITY",
            ),
            (
                "prefer-text-field",
                Server::Postgres,
                "CREATE TABLE t (id bigint PRIMARY KEY, s varchar(40))",
                "CREATE TABLE t (id bigint PRIMARY KEY, s text CHECK (length(s) <= 40))",
            ),
            (
                "ban-drop-not-null",
                Server::Postgres,
                "ALTER TABLE t ALTER COLUMN k DROP NOT NULL",
                "ALTER TABLE t ALTER COLUMN k DROP DEFAULT",
            ),
            (
                "ban-drop-database",
                Server::Mysql,
                "DROP DATABASE shop",
                "DROP VIEW v",
            ),
            (
                "ban-truncate-cascade",
                Server::Postgres,
                "TRUNCATE orders CASCADE",
                "TRUNCATE orders, order_lines",
            ),
            (
                "prefer-timestamptz",
                Server::Postgres,
                "ALTER TABLE t ADD COLUMN at timestamp",
                "ALTER TABLE t ADD COLUMN at timestamptz",
            ),
        ];
        for (rule, server, bad, good) in cases {
            let wrap = |sql: &str| format!("-- +swivel Up\n{sql};\n-- +swivel Down\n");
            let found = lint(*server, &wrap(bad));
            assert!(found.contains(rule), "{rule}: `{bad}` found {found:?}");
            let found = lint(*server, &wrap(good));
            assert!(!found.contains(rule), "{rule}: `{good}` found {found:?}");
        }
        // Every rule of the table is exercised above or below.
        let covered: Vec<&str> = cases.iter().map(|c| c.0).collect();
        for r in rules::RULES {
            assert!(
                covered.contains(&r.name) || ["missing-down", "down-loses-data"].contains(&r.name),
                "{} has no case",
                r.name
            );
        }
    }

    #[test]
    fn file_rules_and_ignores() {
        assert_eq!(
            pg("-- +swivel Up\nALTER TABLE t ADD COLUMN x int;\n"),
            vec!["missing-down"]
        );
        assert!(
            pg("ALTER TABLE t ADD COLUMN x int;").is_empty(),
            "plain SQL has no sections"
        );
        assert_eq!(
            pg("-- +swivel Up\nALTER TABLE t ADD COLUMN x int;\n-- +swivel Down\nALTER TABLE t DROP COLUMN x;\n"),
            vec!["down-loses-data"]
        );
        assert!(pg("-- +swivel Up\nCREATE TABLE u (id bigint PRIMARY KEY);\n-- +swivel Down\n-- swivel:lint ignore down-loses-data\nDROP TABLE u;\n").is_empty());
        assert!(pg("-- +swivel Up\n-- swivel:lint ignore ban-drop-column, changing-column-type\nALTER TABLE t DROP COLUMN x, ALTER COLUMN k TYPE bigint;\n-- +swivel Down\n").is_empty());
        // An ignore names its rule: another rule still fires.
        assert_eq!(
            pg("-- +swivel Up\n-- swivel:lint ignore ban-drop-column\nALTER TABLE t ALTER COLUMN k TYPE bigint;\n-- +swivel Down\n"),
            vec!["changing-column-type"]
        );
        // PostgreSQL-only rules stay quiet on MySQL.
        assert!(my("CREATE INDEX i ON t (k); ALTER TABLE t ADD COLUMN at DATETIME;").is_empty());
    }

    #[test]
    fn the_text_report_names_rule_line_and_what_to_do() {
        let mut report = Report::default();
        lint_text(
            Path::new("migrations/V1__x.sql"),
            "-- +swivel Up\n\nALTER TABLE orders\n  DROP COLUMN note;\n-- +swivel Down\n",
            Server::Postgres,
            &mut report,
        )
        .unwrap();
        let text = render_text(&report);
        assert!(
            text.starts_with("migrations/V1__x.sql:3: ban-drop-column: dropping a column"),
            "{text}"
        );
        assert!(
            text.contains("statement: ALTER TABLE orders DROP COLUMN note"),
            "{text}"
        );
        assert!(text.contains("instead: stop using the column"), "{text}");
        assert!(text.ends_with("1 finding(s)\n"), "{text}");
    }
}
