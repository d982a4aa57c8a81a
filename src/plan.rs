//! The requested change: parse the ALTER's actions with a real SQL parser, classify them and
//! refuse what cannot be done online. Backend-neutral; the backends inspect the table.

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, Expr, Ident, Statement,
    TableConstraint, Value,
};
use sqlparser::dialect::Dialect;
use sqlparser::parser::Parser;

use crate::error::{Error, Result};

/// The ALTER as swivel understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterSpec {
    /// The actions as the user wrote them; applied verbatim to the shadow table.
    pub actions: String,
    /// Column renames, old name to new name.
    pub renames: Vec<(String, String)>,
    /// `ALTER COLUMN c TYPE t USING expr`: the column and the expression (over the old row).
    pub using: Vec<(String, String)>,
    /// True when no action needs the rows rewritten: run it directly instead of copying.
    pub metadata_only: bool,
}

/// Parse the actions that follow `ALTER TABLE <table>` (gh-ost and pt-osc convention).
/// `fold_case` lower-cases unquoted identifiers, as PostgreSQL does.
pub fn parse_alter(dialect: &dyn Dialect, actions: &str, fold_case: bool) -> Result<AlterSpec> {
    let actions = actions.trim().trim_end_matches(';').trim();
    if actions.is_empty() {
        return Err(Error::refused("--alter is empty: give the actions that follow `ALTER TABLE name`, e.g. --alter \"ALTER COLUMN k TYPE bigint\""));
    }
    let lowered = actions.to_ascii_lowercase();
    if lowered.starts_with("alter table") {
        return Err(Error::refused("--alter takes only what follows `ALTER TABLE name` (e.g. \"ADD COLUMN x int\"); drop the `ALTER TABLE name` prefix"));
    }
    let sql = format!("ALTER TABLE swivel_target {actions}");
    let statements = Parser::parse_sql(dialect, &sql).map_err(|e| {
        Error::refused(format!(
            "the ALTER does not parse: {e}; check the syntax of --alter"
        ))
    })?;
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
        actions: actions.to_string(),
        renames: Vec::new(),
        using: Vec::new(),
        metadata_only: true,
    };
    for op in operations {
        let rewrites = match op {
            AlterTableOperation::AddColumn { column_def, .. } => {
                let mut rewrites = false;
                for option in &column_def.options {
                    match &option.option {
                        ColumnOption::Unique { .. } => return Err(refuse_unique()),
                        ColumnOption::Null | ColumnOption::NotNull => {}
                        ColumnOption::Default(expr) => rewrites |= !is_constant(expr),
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
                AlterColumnOperation::SetDataType { using, .. } => {
                    if let Some(expr) = using {
                        spec.using.push((ident(column_name), expr.to_string()));
                    }
                    true
                }
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
            AlterTableOperation::ModifyColumn { .. } => true,
            other => {
                return Err(Error::refused(format!(
                    "swivel does not run `{other}` as an online change: it changes no columns or \
                     constraints of the rows; run it directly with ALTER TABLE"
                )))
            }
        };
        spec.metadata_only &= !rewrites;
    }
    Ok(spec)
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
fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Value(v) => !matches!(v.value, Value::Placeholder(_)),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_constant(expr),
        Expr::UnaryOp { expr, .. } => is_constant(expr),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;

    fn pg(actions: &str) -> Result<AlterSpec> {
        parse_alter(&PostgreSqlDialect {}, actions, true)
    }

    #[test]
    fn type_change_rewrites() {
        let spec = pg("ALTER COLUMN k TYPE bigint").unwrap();
        assert!(!spec.metadata_only);
        assert!(spec.using.is_empty());
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
    fn refusals_say_what_to_do() {
        let e = pg("ALTER COLUMN k TYPE").unwrap_err().to_string();
        assert!(e.contains("does not parse"), "{e}");
        let e = pg("ADD CONSTRAINT u UNIQUE (k)").unwrap_err().to_string();
        assert!(e.contains("CONCURRENTLY"), "{e}");
        let e = pg("RENAME TO other").unwrap_err().to_string();
        assert!(e.contains("run it directly"), "{e}");
        let e = pg("ADD COLUMN x int; DROP TABLE t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("one ALTER TABLE"), "{e}");
        let e = pg("ALTER TABLE t ADD COLUMN x int")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix"), "{e}");
        assert!(pg("").is_err());
    }
}
