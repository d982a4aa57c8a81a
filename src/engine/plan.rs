//! The requested change: parse the ALTER's actions with a real SQL parser, classify them and
//! refuse what cannot be done online. Backend-neutral; the backends inspect the table.

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, Expr, GeneratedExpressionMode, Ident,
    Statement, TableConstraint, Value,
};
use sqlparser::dialect::Dialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, Tokenizer, Whitespace};

use crate::error::{Error, Result};

/// The ALTER as swivel understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterSpec {
    /// The actions as the user wrote them, without comments: what the parser read is what the
    /// server runs.
    pub actions: String,
    /// Why swivel's parser could not read the actions (None: it could). Then only the server
    /// judges them, on the shadow table, and the change is always copied online.
    pub unparsed_reason: Option<String>,
    /// Column renames, old name to new name.
    pub renames: Vec<(String, String)>,
    /// `ALTER COLUMN c TYPE t USING expr`: the column and the expression (over the old row).
    pub using: Vec<(String, String)>,
    /// True when no action is known to rewrite or scan the table: a candidate for a direct
    /// run, which the backend confirms by evidence (PostgreSQL: the trial on an empty copy;
    /// MySQL: ALGORITHM=INSTANT) or else copies online.
    pub metadata_only: bool,
}

impl AlterSpec {
    /// swivel's parser read the actions.
    pub fn parsed(&self) -> bool {
        self.unparsed_reason.is_none()
    }

    /// What to add to the server's refusal of an ALTER swivel could not parse either.
    pub fn unparsed_note(&self) -> String {
        self.unparsed_reason
            .as_ref()
            .map(|why| format!(" (it does not parse for swivel either: {why})"))
            .unwrap_or_default()
    }
}

/// Parse the actions that follow `ALTER TABLE <table>` (gh-ost and pt-osc convention).
/// `fold_case` lower-cases unquoted identifiers, as PostgreSQL does.
pub fn parse_alter(dialect: &dyn Dialect, actions: &str, fold_case: bool) -> Result<AlterSpec> {
    let actions = strip_comments(dialect, actions)?;
    if actions.is_empty() {
        return Err(Error::refused("--alter is empty: give the actions that follow `ALTER TABLE name`, e.g. --alter \"ALTER COLUMN k TYPE bigint\""));
    }
    let lowered = actions.to_ascii_lowercase();
    if lowered.starts_with("alter table") {
        return Err(Error::refused("--alter takes only what follows `ALTER TABLE name` (e.g. \"ADD COLUMN x int\"); drop the `ALTER TABLE name` prefix"));
    }
    let sql = format!("ALTER TABLE swivel_target {actions}");
    let statements = match Parser::parse_sql(dialect, &sql) {
        Ok(statements) => statements,
        // The server is the final parser: what it accepts on the empty shadow table runs
        // online, where a wrong guess about it cannot block the table.
        Err(e) => {
            return Ok(AlterSpec {
                actions,
                unparsed_reason: Some(e.to_string()),
                renames: Vec::new(),
                using: Vec::new(),
                metadata_only: false,
            })
        }
    };
    let [statement] = statements.as_slice() else {
        return Err(Error::refused(
            "--alter must hold the actions of one ALTER TABLE statement, without `;`",
        ));
    };
    let Statement::AlterTable { operations, .. } = statement else {
        return Err(Error::refused(
            "--alter must be the actions of an ALTER TABLE statement",
        ));
    };
    let ident = |i: &Ident| {
        if fold_case && i.quote_style.is_none() {
            i.value.to_lowercase()
        } else {
            i.value.clone()
        }
    };

    let mut spec = AlterSpec {
        actions,
        unparsed_reason: None,
        renames: Vec::new(),
        using: Vec::new(),
        metadata_only: true,
    };
    for op in operations {
        if !is_row_change(op) {
            return Err(Error::refused(format!(
                "swivel does not run `{op}` as an online change: it changes no columns or \
                 constraints of the rows; run it directly with ALTER TABLE"
            )));
        }
        let rewrites = match op {
            AlterTableOperation::AddColumn { column_def, .. } => {
                // serial types fill every row from a sequence: a rewrite on PostgreSQL.
                let type_name = column_def.data_type.to_string().to_ascii_lowercase();
                let mut rewrites = type_name.contains("serial");
                for option in &column_def.options {
                    match &option.option {
                        ColumnOption::Unique { .. } => return Err(refuse_unique()),
                        ColumnOption::Null
                        | ColumnOption::NotNull
                        | ColumnOption::Comment(_)
                        | ColumnOption::CharacterSet(_)
                        | ColumnOption::Collation(_) => {}
                        // A volatile default is computed per row: a rewrite. Only literals are
                        // known not to be volatile without asking the catalog.
                        ColumnOption::Default(expr) => rewrites |= !is_constant(expr),
                        // Computed on read (MySQL's VIRTUAL, its default): catalog only, which
                        // ALGORITHM=INSTANT confirms. (PostgreSQL 18's virtual columns do not
                        // parse here yet: sqlparser wants STORED, so they run online.)
                        ColumnOption::Generated {
                            generation_expr: Some(_),
                            generation_expr_mode,
                            ..
                        } if *generation_expr_mode != Some(GeneratedExpressionMode::Stored) => {}
                        // Identity, stored generated, AUTO_INCREMENT, checks, references:
                        // rewrite or scan; copy online.
                        _ => rewrites = true,
                    }
                }
                rewrites
            }
            AlterTableOperation::AddConstraint {
                constraint,
                not_valid,
            } => match constraint {
                TableConstraint::Unique { .. } | TableConstraint::PrimaryKey { .. } => {
                    return Err(refuse_unique())
                }
                _ => !not_valid,
            },
            AlterTableOperation::DropColumn { .. }
            | AlterTableOperation::DropConstraint { .. }
            | AlterTableOperation::RenameConstraint { .. }
            | AlterTableOperation::ValidateConstraint { .. } => false,
            AlterTableOperation::RenameColumn {
                old_column_name,
                new_column_name,
            } => {
                spec.renames
                    .push((ident(old_column_name), ident(new_column_name)));
                false
            }
            AlterTableOperation::AlterColumn { column_name, op } => match op {
                AlterColumnOperation::SetDefault { .. }
                | AlterColumnOperation::DropDefault
                | AlterColumnOperation::DropNotNull => false,
                // Without USING, a type change may be binary-coercible (varchar(10) to
                // varchar(20), varchar to text): a candidate, which the trial on an empty copy
                // confirms or refutes. MySQL's MODIFY is always copied.
                AlterColumnOperation::SetDataType { using, .. } => match using {
                    Some(expr) => {
                        spec.using.push((ident(column_name), expr.to_string()));
                        true
                    }
                    None => false,
                },
                AlterColumnOperation::SetNotNull | AlterColumnOperation::AddGenerated { .. } => {
                    true
                }
            },
            AlterTableOperation::ChangeColumn {
                old_name, new_name, ..
            } => {
                if ident(old_name) != ident(new_name) {
                    spec.renames.push((ident(old_name), ident(new_name)));
                }
                true
            }
            // ModifyColumn: MySQL's MODIFY is always copied.
            _ => true,
        };
        spec.metadata_only &= !rewrites;
    }
    Ok(spec)
}

/// Whether `op` changes the rows' columns or constraints: what the online engine runs. The rest
/// (renaming the table, indexes, options) it refuses, and the migration runner runs directly.
pub fn is_row_change(op: &AlterTableOperation) -> bool {
    matches!(
        op,
        AlterTableOperation::AddColumn { .. }
            | AlterTableOperation::AddConstraint { .. }
            | AlterTableOperation::DropColumn { .. }
            | AlterTableOperation::DropConstraint { .. }
            | AlterTableOperation::RenameConstraint { .. }
            | AlterTableOperation::ValidateConstraint { .. }
            | AlterTableOperation::RenameColumn { .. }
            | AlterTableOperation::AlterColumn { .. }
            | AlterTableOperation::ChangeColumn { .. }
            | AlterTableOperation::ModifyColumn { .. }
    )
}

/// `actions` without its comments, so that what swivel parses is what the server runs: a
/// trailing `-- comment` once swallowed the `COMMIT` after it. Version comments (`/*! … */`,
/// `/*M! … */`) are refused: a comment to the parser, a statement to MySQL and MariaDB. So is
/// anything after a `;`.
pub fn strip_comments(dialect: &dyn Dialect, actions: &str) -> Result<String> {
    let tokens = Tokenizer::new(dialect, actions)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(|e| {
            Error::refused(format!(
                "the ALTER does not parse: {e}; check the quoting in --alter"
            ))
        })?;
    let mut kept = String::new();
    let mut after_semicolon = false;
    for t in &tokens {
        let text = &actions[offset(actions, t.span.start)..offset(actions, t.span.end)];
        match &t.token {
            Token::Whitespace(Whitespace::MultiLineComment(c))
                if c.starts_with('!') || c.starts_with("M!") =>
            {
                return Err(Error::refused(format!(
                    "--alter holds a version comment `/*{c}*/`, which MySQL and MariaDB run as \
                     part of the statement: write its content without the comment markers, or \
                     drop it"
                )));
            }
            Token::Whitespace(Whitespace::MultiLineComment(_)) => kept.push(' '),
            Token::Whitespace(Whitespace::SingleLineComment { comment, .. }) => {
                kept.push(if comment.ends_with('\n') { '\n' } else { ' ' })
            }
            Token::Whitespace(_) => kept.push_str(text),
            Token::SemiColon => after_semicolon = true,
            _ if after_semicolon => {
                return Err(Error::refused(
                    "--alter must hold the actions of one ALTER TABLE statement: nothing may \
                     follow a `;`",
                ))
            }
            _ => kept.push_str(text),
        }
    }
    Ok(kept.trim().to_string())
}

/// The byte offset of a tokenizer location (1-based line and column, columns in characters).
fn offset(text: &str, at: Location) -> usize {
    let (mut line, mut column) = (1, 1);
    for (i, c) in text.char_indices() {
        if line == at.line && column == at.column {
            return i;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    text.len()
}

fn refuse_unique() -> Error {
    Error::refused(
        "adding a UNIQUE or PRIMARY KEY constraint online is not supported: a copy cannot tell \
         duplicates from replayed rows. Build it without blocking writes instead: on PostgreSQL \
         CREATE UNIQUE INDEX CONCURRENTLY …, then ALTER TABLE … ADD CONSTRAINT … UNIQUE USING INDEX …; \
         on MySQL/MariaDB ALTER TABLE … ADD UNIQUE (…), ALGORITHM=INPLACE, LOCK=NONE",
    )
}

/// A literal, or a cast of one: a default the server can store without rewriting rows.
pub fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Value(v) => !matches!(v.value, Value::Placeholder(_)),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_constant(expr),
        Expr::UnaryOp { expr, .. } => is_constant(expr),
        _ => false,
    }
}

/// For an ALTER swivel could not parse, a source column missing from the shadow table while
/// another appeared may be a rename, whose values the copy would drop: refuse.
pub fn refuse_ambiguous_renames<'a>(
    source: impl Iterator<Item = &'a str>,
    shadow: impl Iterator<Item = String>,
) -> Result<()> {
    let source: Vec<&str> = source.collect();
    let shadow: Vec<String> = shadow.collect();
    let gone: Vec<&str> = source
        .iter()
        .copied()
        .filter(|c| !shadow.iter().any(|s| s.eq_ignore_ascii_case(c)))
        .collect();
    let added: Vec<&str> = shadow
        .iter()
        .map(String::as_str)
        .filter(|s| !source.iter().any(|c| c.eq_ignore_ascii_case(s)))
        .collect();
    if !gone.is_empty() && !added.is_empty() {
        return Err(Error::refused(format!(
            "swivel's parser cannot read this ALTER, and it removes column(s) {} while adding {}: \
             swivel cannot tell a rename (whose values must be copied) from a drop. Run the \
             rename as a separate step, or write the ALTER so that it parses",
            gone.join(", "),
            added.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;

    fn pg(actions: &str) -> Result<AlterSpec> {
        parse_alter(&PostgreSqlDialect {}, actions, true)
    }

    #[test]
    fn type_change_is_left_to_the_trial() {
        // A candidate only: PostgreSQL's trial on an empty copy decides (see postgres::inspect).
        let spec = pg("ALTER COLUMN k TYPE bigint").unwrap();
        assert!(spec.metadata_only);
        assert!(spec.using.is_empty());
        assert!(
            !pg("ALTER COLUMN k TYPE bigint USING k + 1")
                .unwrap()
                .metadata_only
        );
    }

    #[test]
    fn using_and_renames_are_collected() {
        let spec =
            pg("ALTER COLUMN c TYPE int USING length(c), RENAME COLUMN \"Pad\" TO pad2").unwrap();
        assert_eq!(spec.using, vec![("c".to_string(), "length(c)".to_string())]);
        assert_eq!(spec.renames, vec![("Pad".to_string(), "pad2".to_string())]);
        assert!(!spec.metadata_only);
    }

    #[test]
    fn metadata_only_changes() {
        assert!(pg("ADD COLUMN x int").unwrap().metadata_only);
        assert!(
            pg("ADD COLUMN x int NOT NULL DEFAULT 0")
                .unwrap()
                .metadata_only
        );
        assert!(
            pg("ALTER COLUMN k SET DEFAULT 3, DROP COLUMN pad")
                .unwrap()
                .metadata_only
        );
        assert!(
            !pg("ADD COLUMN x uuid DEFAULT gen_random_uuid()")
                .unwrap()
                .metadata_only
        );
        assert!(
            !pg("ADD COLUMN x int, ALTER COLUMN k SET NOT NULL")
                .unwrap()
                .metadata_only
        );
    }

    #[test]
    fn mysql_modify_and_change() {
        let my = |a: &str| parse_alter(&sqlparser::dialect::MySqlDialect {}, a, false);
        assert!(
            !my("MODIFY k BIGINT NOT NULL DEFAULT 0")
                .unwrap()
                .metadata_only
        );
        let spec = my("CHANGE COLUMN c c2 varchar(200), CHANGE pad pad char(60)").unwrap();
        assert_eq!(spec.renames, vec![("c".to_string(), "c2".to_string())]);
        assert!(my("ADD COLUMN x int").unwrap().metadata_only);
    }

    #[test]
    fn comments_are_stripped_and_version_comments_refused() {
        let spec = pg("ADD COLUMN note text -- for the support team").unwrap();
        assert_eq!(spec.actions, "ADD COLUMN note text");
        assert!(spec.metadata_only);
        let spec =
            pg("ADD COLUMN a int /* first */,\n  ADD COLUMN b text DEFAULT 'x -- y';").unwrap();
        assert_eq!(
            spec.actions,
            "ADD COLUMN a int  ,\n  ADD COLUMN b text DEFAULT 'x -- y'"
        );
        let my = |a: &str| parse_alter(&sqlparser::dialect::MySqlDialect {}, a, false);
        assert_eq!(
            my("MODIFY c varchar(10) # why\n, ADD x int")
                .unwrap()
                .actions,
            "MODIFY c varchar(10) \n, ADD x int"
        );
        let e = my("ADD COLUMN x int /*!50100 , DROP COLUMN y */").unwrap_err();
        assert!(e.to_string().contains("version comment"), "{e}");
        let e = my("ADD COLUMN x int; -- ok\n DROP TABLE t").unwrap_err();
        assert!(e.to_string().contains("follow a `;`"), "{e}");
        assert_eq!(
            my("ADD COLUMN é int; -- fin").unwrap().actions,
            "ADD COLUMN é int"
        );
    }

    #[test]
    fn what_does_not_parse_goes_to_the_server() {
        let my = |a: &str| parse_alter(&sqlparser::dialect::MySqlDialect {}, a, false);
        let spec = my("CONVERT TO CHARACTER SET utf8mb4").unwrap();
        assert!(!spec.parsed() && !spec.metadata_only);
        assert!(!pg("ADD COLUMN s bigserial").unwrap().metadata_only);
        assert!(
            !pg("ADD COLUMN s int GENERATED ALWAYS AS IDENTITY")
                .unwrap()
                .metadata_only
        );
        assert!(pg("ADD COLUMN s int COLLATE \"C\"").unwrap().metadata_only);
        assert!(
            !pg("ADD COLUMN g int GENERATED ALWAYS AS (k * 2) STORED")
                .unwrap()
                .metadata_only
        );
        assert!(my("ADD COLUMN g int AS (k * 2)").unwrap().metadata_only);
    }

    #[test]
    fn refusals_say_what_to_do() {
        assert!(!pg("ALTER COLUMN k TYPE").unwrap().parsed());
        let e = pg("ADD CONSTRAINT u UNIQUE (k)").unwrap_err().to_string();
        assert!(e.contains("CONCURRENTLY"), "{e}");
        let e = pg("RENAME TO other").unwrap_err().to_string();
        assert!(e.contains("run it directly"), "{e}");
        let e = pg("ADD COLUMN x int; DROP TABLE t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("one ALTER TABLE"), "{e}");
        assert!(pg("-- nothing").is_err());
        let e = pg("ALTER TABLE t ADD COLUMN x int")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix"), "{e}");
        assert!(pg("").is_err());
    }
}
