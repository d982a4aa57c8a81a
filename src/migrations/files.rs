//! Migration files: `V<version>__<description>.sql`, plain SQL in `-- +swivel Up` and
//! `-- +swivel Down` sections, split into statements by sqlparser's tokenizer (a `;` inside a
//! string, a dollar quote or a comment ends nothing).

use std::path::{Path, PathBuf};

use sqlparser::dialect::Dialect;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::error::{Error, Result};

/// The section markers, as comments of their own.
const UP: &str = "+swivel Up";
const DOWN: &str = "+swivel Down";

/// Which part of a migration a statement belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Up,
    Down,
}

/// One statement of a file, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub section: Section,
    /// The statement's text, without the comments before it and without its `;`.
    pub sql: String,
    /// The line it starts on (1-based).
    pub line: u64,
    /// The comment lines right above it (for `-- swivel:lint ignore RULE`).
    pub comments: Vec<String>,
}

/// A file's statements. Without section markers, the whole file is one Up section.
#[derive(Clone, Debug)]
pub struct Script {
    pub statements: Vec<Statement>,
    /// The file marks its sections (a migration), rather than being plain SQL.
    pub has_markers: bool,
    pub has_down: bool,
}

/// Split `text` into statements and sections.
pub fn split(dialect: &dyn Dialect, text: &str) -> Result<Script> {
    let tokens = Tokenizer::new(dialect, text)
        .tokenize_with_location()
        .map_err(|e| Error::refused(format!("the SQL does not tokenize: {e}")))?;
    let mut statements = Vec::new();
    let (mut has_markers, mut has_down) = (false, false);
    let mut section = Section::Up;
    let mut sql = String::new();
    let mut line = 0;
    let mut comments: Vec<String> = Vec::new();
    let mut flush = |sql: &mut String, line: u64, comments: &mut Vec<String>, section| {
        let text = sql.trim();
        if !text.is_empty() {
            statements.push(Statement {
                section,
                sql: text.to_string(),
                line,
                comments: std::mem::take(comments),
            });
        }
        sql.clear();
    };
    for t in tokens {
        match &t.token {
            Token::SemiColon => {
                flush(&mut sql, line, &mut comments, section);
                comments.clear();
            }
            Token::Whitespace(Whitespace::SingleLineComment { comment, .. })
                if matches!(comment.trim(), UP | DOWN) =>
            {
                if !sql.is_empty() {
                    return Err(Error::refused(format!(
                        "line {}: `-- {}` inside a statement: end the statement with `;` first",
                        t.span.start.line,
                        comment.trim()
                    )));
                }
                has_markers = true;
                section = if comment.trim() == UP {
                    Section::Up
                } else {
                    has_down = true;
                    Section::Down
                };
                comments.clear();
            }
            // A statement's text starts at its first token: what comes before is its comments.
            Token::Whitespace(w) if sql.is_empty() => {
                if let Whitespace::SingleLineComment { comment, .. } = w {
                    comments.push(comment.trim().to_string());
                }
                if let Whitespace::MultiLineComment(c) = w {
                    comments.push(c.trim().to_string());
                }
            }
            token => {
                if sql.is_empty() {
                    line = t.span.start.line;
                }
                sql.push_str(&token.to_string());
            }
        }
    }
    flush(&mut sql, line, &mut comments, section);
    Ok(Script {
        statements,
        has_markers,
        has_down,
    })
}

/// A migration file's name: `V<version>__<description>.sql`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub version: String,
    pub description: String,
}

impl Name {
    pub fn parse(file: &str) -> Option<Name> {
        let rest = file.strip_prefix('V')?.strip_suffix(".sql")?;
        let (version, description) = rest.split_once("__")?;
        if version.is_empty()
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            return None;
        }
        Some(Name {
            version: version.to_string(),
            description: description.replace('_', " "),
        })
    }
}

/// The file name for a new migration made at `now` (UTC) with `description`.
pub fn new_file_name(now: time::OffsetDateTime, description: &str) -> Result<String> {
    let slug: String = description
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .split('_')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if slug.is_empty() {
        return Err(Error::refused(
            "give the migration a description of letters or digits, e.g. \"add status to orders\"",
        ));
    }
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]");
    let version = now
        .format(&format)
        .map_err(|e| Error::refused(format!("formatting the version: {e}")))?;
    Ok(format!("V{version}__{slug}.sql"))
}

/// What a new migration file holds.
pub const TEMPLATE: &str = "-- +swivel Up\n\n\n-- +swivel Down\n\n";

/// The `.sql` files under each path (a file, or a directory read one level deep), sorted.
pub fn sql_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| Error::refused(format!("reading {}: {e}", path.display())))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                .collect();
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(Error::refused(format!(
                "{} does not exist: give SQL files or directories of them",
                path.display()
            )));
        }
    }
    Ok(files)
}

/// Two files with one version are an error (the seeds' version conflicts).
pub fn check_versions(files: &[PathBuf]) -> Result<()> {
    let mut seen: std::collections::BTreeMap<String, &Path> = Default::default();
    for f in files {
        let Some(name) = f.file_name().and_then(|n| n.to_str()).and_then(Name::parse) else {
            continue;
        };
        if let Some(other) = seen.insert(name.version.clone(), f) {
            return Err(Error::refused(format!(
                "{} and {} have the same version {}: give one a new version (swivel migrate new \
                 makes timestamped ones)",
                other.display(),
                f.display(),
                name.version
            )));
        }
    }
    Ok(())
}

/// A migration file, read and split.
#[derive(Clone, Debug)]
pub struct Migration {
    pub version: String,
    pub description: String,
    /// The file's name, as the history records it.
    pub script: String,
    pub path: PathBuf,
    /// CRC-32 of the text (line endings made `\n`, so a checkout on another system is not drift),
    /// as Flyway records it: a signed 32-bit number.
    pub checksum: i32,
    pub up: Vec<Statement>,
    pub down: Vec<Statement>,
    pub has_down: bool,
}

/// The checksum the history keeps of a file's text.
pub fn checksum(text: &str) -> i32 {
    crc32fast::hash(text.replace("\r\n", "\n").as_bytes()) as i32
}

/// Every migration in `dir`, in version order. A `.sql` file not named `V<version>__<desc>.sql`
/// and two files with one version are errors: the runner would not know where they go.
pub fn load_dir(dir: &Path, dialect: &dyn Dialect) -> Result<Vec<Migration>> {
    if !dir.is_dir() {
        return Err(Error::refused(format!(
            "{} is not a directory of migrations: give --dir, or make one with swivel migrate new",
            dir.display()
        )));
    }
    let paths = sql_files(&[dir.to_path_buf()])?;
    check_versions(&paths)?;
    let mut out = Vec::new();
    for path in paths {
        let script = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(name) = Name::parse(&script) else {
            return Err(Error::refused(format!(
                "{}: a migration's name is V<version>__<description>.sql (swivel migrate new \
                 makes one); rename it or move it out of {}",
                path.display(),
                dir.display()
            )));
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::refused(format!("reading {}: {e}", path.display())))?;
        let split = split(dialect, &text)
            .map_err(|e| Error::refused(format!("{}: {e}", path.display())))?;
        let (up, down) = split
            .statements
            .into_iter()
            .partition(|s| s.section == Section::Up);
        out.push(Migration {
            version: name.version,
            description: name.description,
            script,
            path,
            checksum: checksum(&text),
            up,
            down,
            has_down: split.has_down,
        });
    }
    out.sort_by(|a, b| compare_versions(&a.version, &b.version));
    Ok(out)
}

/// Version order, as Flyway's: parts split at `.` and `_`, numbers compared as numbers
/// (1.10 after 1.9), anything else as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<String> { v.split(['.', '_']).map(str::to_string).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        let order = if numeric(x) && numeric(y) {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if order.is_ne() {
            return order;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};

    #[test]
    fn sections_and_statements_split_by_tokens() {
        let text = "-- +swivel Up\n\
            CREATE TABLE t (id int PRIMARY KEY, s text DEFAULT 'a;b');\n\
            -- swivel:lint ignore ban-drop-column\n\
            ALTER TABLE t DROP COLUMN s;\n\
            CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
            -- +swivel Down\n\
            DROP TABLE t;\n";
        let s = split(&PostgreSqlDialect {}, text).unwrap();
        assert!(s.has_markers && s.has_down);
        let got: Vec<(Section, u64, &str)> = s
            .statements
            .iter()
            .map(|st| (st.section, st.line, st.sql.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Section::Up,
                    2,
                    "CREATE TABLE t (id int PRIMARY KEY, s text DEFAULT 'a;b')"
                ),
                (Section::Up, 4, "ALTER TABLE t DROP COLUMN s"),
                (
                    Section::Up,
                    5,
                    "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql"
                ),
                (Section::Down, 7, "DROP TABLE t"),
            ]
        );
        assert_eq!(
            s.statements[1].comments,
            vec!["swivel:lint ignore ban-drop-column"]
        );
        assert!(s.statements[2].comments.is_empty());
    }

    #[test]
    fn plain_sql_is_one_up_section() {
        let s = split(
            &MySqlDialect {},
            "ALTER TABLE t ADD COLUMN `x;` int; # done\n",
        )
        .unwrap();
        assert!(!s.has_markers && !s.has_down);
        assert_eq!(s.statements.len(), 1);
        assert_eq!(s.statements[0].sql, "ALTER TABLE t ADD COLUMN `x;` int");
    }

    #[test]
    fn a_marker_inside_a_statement_is_refused() {
        let e = split(
            &PostgreSqlDialect {},
            "-- +swivel Up\nSELECT 1\n-- +swivel Down\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("inside a statement"), "{e}");
    }

    #[test]
    fn names_and_versions() {
        assert_eq!(
            Name::parse("V20261123T101500__add_status_to_orders.sql"),
            Some(Name {
                version: "20261123T101500".into(),
                description: "add status to orders".into()
            })
        );
        assert_eq!(
            Name::parse("V1__x.sql").map(|n| n.version),
            Some("1".into())
        );
        assert_eq!(Name::parse("add.sql"), None);
        assert_eq!(Name::parse("V__x.sql"), None);
        let now = time::macros::datetime!(2026-11-23 10:15:00 UTC);
        assert_eq!(
            new_file_name(now, "Add status to Orders!").unwrap(),
            "V20261123T101500__add_status_to_orders.sql"
        );
        assert!(new_file_name(now, "  !! ").is_err());
        let files = vec![
            PathBuf::from("m/V1__a.sql"),
            PathBuf::from("m/V2__b.sql"),
            PathBuf::from("m/V1__c.sql"),
        ];
        let e = check_versions(&files).unwrap_err().to_string();
        assert!(e.contains("same version 1"), "{e}");
        assert!(check_versions(&files[..2]).is_ok());
    }

    #[test]
    fn versions_order_as_numbers() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("1.9", "1.10"), Less);
        assert_eq!(compare_versions("2", "10"), Less);
        assert_eq!(compare_versions("1.1", "1.1.1"), Less);
        assert_eq!(compare_versions("01", "1"), Equal);
        assert_eq!(compare_versions("20261124T055712", "20261124T055713"), Less);
        assert_eq!(checksum("a\r\nb\n"), checksum("a\nb\n"));
        assert_ne!(checksum("a\n"), checksum("b\n"));
    }
}
