//! Which way each statement of a migration goes: an `ALTER TABLE` that changes rows is a
//! candidate for the online engine (taken above the threshold), `CREATE INDEX` is built without
//! blocking writes (PostgreSQL `CONCURRENTLY`, MySQL `ALGORITHM=INPLACE, LOCK=NONE`), and
//! everything else runs as written.

use sqlparser::ast::{ObjectType, Statement as Ast};
use sqlparser::dialect::Dialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::engine::plan::is_row_change;
use crate::error::{Error, Result};
use crate::lint::Server;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An `ALTER TABLE` whose actions all change rows' columns or constraints: online when the
    /// table is large. `table` is `[schema.]name` unquoted, `actions` what follows the name.
    Alter { table: String, actions: String },
    /// `CREATE INDEX` rewritten to build without blocking writes; PostgreSQL's `DROP INDEX`
    /// rewritten to drop without blocking reads.
    Index(String),
    /// `BEGIN`, `COMMIT`, `ROLLBACK` written in the file: the file manages its transactions.
    Transaction,
    /// Anything else: run as written, under a lock timeout.
    Other,
}

/// What `sql` is, for `server`.
pub fn classify(sql: &str, server: Server) -> Result<Kind> {
    let dialect = server.dialect();
    let Ok(mut parsed) = Parser::parse_sql(dialect.as_ref(), sql) else {
        // The server is the final parser; what swivel cannot read runs as written.
        return Ok(Kind::Other);
    };
    if parsed.len() != 1 {
        return Ok(Kind::Other);
    }
    match parsed.remove(0) {
        Ast::AlterTable { operations, .. } => {
            let row_changes = operations.iter().filter(|op| is_row_change(op)).count();
            if row_changes == 0 {
                return Ok(Kind::Other);
            }
            if row_changes < operations.len() {
                return Err(Error::refused(format!(
                    "`{sql}` mixes changes to the rows' columns with other actions (renaming the \
                     table, indexes, options): split it into two ALTER TABLE statements, so the \
                     first can run online and the second directly"
                )));
            }
            let (table, actions) = split_alter(dialect.as_ref(), sql)?;
            Ok(Kind::Alter { table, actions })
        }
        Ast::CreateIndex(index) => {
            let sql = match server {
                Server::Postgres if index.concurrently => sql.to_string(),
                Server::Postgres => add_concurrently(dialect.as_ref(), sql)?,
                // The statement's own ALGORITHM= or LOCK= stands (keywords, not a column
                // named `clock`).
                Server::Mysql
                    if tokens(dialect.as_ref(), sql)?
                        .iter()
                        .any(|t| is_keyword(t, "ALGORITHM") || is_keyword(t, "LOCK")) =>
                {
                    sql.to_string()
                }
                Server::Mysql => format!("{sql} ALGORITHM=INPLACE LOCK=NONE"),
            };
            Ok(Kind::Index(sql))
        }
        // One index, without CASCADE: CONCURRENTLY can drop it (and nothing else).
        Ast::Drop {
            object_type: ObjectType::Index,
            names,
            cascade: false,
            ..
        } if server == Server::Postgres && names.len() == 1 => {
            Ok(Kind::Index(add_concurrently(dialect.as_ref(), sql)?))
        }
        Ast::StartTransaction { .. } | Ast::Commit { .. } | Ast::Rollback { .. } => {
            Ok(Kind::Transaction)
        }
        _ => Ok(Kind::Other),
    }
}

fn tokens(dialect: &dyn Dialect, sql: &str) -> Result<Vec<Token>> {
    Tokenizer::new(dialect, sql)
        .tokenize()
        .map_err(|e| Error::refused(format!("`{sql}` does not tokenize: {e}")))
}

fn is_keyword(t: &Token, word: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// `ALTER TABLE [IF EXISTS] [ONLY] name actions` → (`name` unquoted, `actions` as written).
fn split_alter(dialect: &dyn Dialect, sql: &str) -> Result<(String, String)> {
    let tokens = tokens(dialect, sql)?;
    // Where the tokens that are not whitespace are.
    let at: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i], Token::Whitespace(_)))
        .collect();
    let token = |i: usize| at.get(i).map(|&j| &tokens[j]);
    let keyword = |i: usize, w: &str| token(i).is_some_and(|t| is_keyword(t, w));
    let mut i = 2; // ALTER TABLE
    if keyword(i, "IF") && keyword(i + 1, "EXISTS") {
        i += 2;
    }
    if keyword(i, "ONLY") {
        i += 1;
    }
    let mut parts = Vec::new();
    while let Some(Token::Word(w)) = token(i) {
        if w.value.contains('.') {
            return Err(Error::refused(format!(
                "the table name `{}` holds a dot: swivel cannot run it online; rename the \
                 table first",
                w.value
            )));
        }
        parts.push(w.value.clone());
        i += 1;
        if token(i) != Some(&Token::Period) {
            break;
        }
        i += 1;
    }
    let Some(&start) = at.get(i) else {
        return Err(Error::refused(format!(
            "`{sql}` has no actions after the table name"
        )));
    };
    let actions: String = tokens[start..].iter().map(|t| t.to_string()).collect();
    Ok((parts.join("."), actions.trim().to_string()))
}

/// `CREATE [UNIQUE] INDEX …` → `CREATE [UNIQUE] INDEX CONCURRENTLY …`, and the same for
/// `DROP INDEX`.
fn add_concurrently(dialect: &dyn Dialect, sql: &str) -> Result<String> {
    let mut out = String::new();
    let mut done = false;
    for t in tokens(dialect, sql)? {
        out.push_str(&t.to_string());
        if !done && is_keyword(&t, "INDEX") {
            out.push_str(" CONCURRENTLY");
            done = true;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alter(table: &str, actions: &str) -> Kind {
        Kind::Alter {
            table: table.into(),
            actions: actions.into(),
        }
    }

    #[test]
    fn alters_split_into_table_and_actions() {
        let pg = Server::Postgres;
        assert_eq!(
            classify("ALTER TABLE orders ALTER COLUMN k TYPE bigint", pg).unwrap(),
            alter("orders", "ALTER COLUMN k TYPE bigint")
        );
        assert_eq!(
            classify(
                "ALTER TABLE IF EXISTS ONLY \"Shop\".orders ADD COLUMN s text DEFAULT 'a b'",
                pg
            )
            .unwrap(),
            alter("Shop.orders", "ADD COLUMN s text DEFAULT 'a b'")
        );
        assert_eq!(
            classify("ALTER TABLE `o` MODIFY k BIGINT", Server::Mysql).unwrap(),
            alter("o", "MODIFY k BIGINT")
        );
        // Renames and other catalog-only actions run directly.
        assert_eq!(
            classify("ALTER TABLE orders RENAME TO orders2", pg).unwrap(),
            Kind::Other
        );
        let e = classify("ALTER TABLE orders ADD COLUMN x int, RENAME TO o2", pg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("split it"), "{e}");
    }

    #[test]
    fn indexes_build_without_blocking_writes() {
        assert_eq!(
            classify("CREATE UNIQUE INDEX i ON orders (k)", Server::Postgres).unwrap(),
            Kind::Index("CREATE UNIQUE INDEX CONCURRENTLY i ON orders (k)".into())
        );
        assert_eq!(
            classify(
                "CREATE INDEX CONCURRENTLY i ON s.orders (k)",
                Server::Postgres
            )
            .unwrap(),
            Kind::Index("CREATE INDEX CONCURRENTLY i ON s.orders (k)".into())
        );
        assert_eq!(
            classify("CREATE INDEX i ON orders (k)", Server::Mysql).unwrap(),
            Kind::Index("CREATE INDEX i ON orders (k) ALGORITHM=INPLACE LOCK=NONE".into())
        );
        assert_eq!(
            classify("CREATE INDEX i ON t (clock)", Server::Mysql).unwrap(),
            Kind::Index("CREATE INDEX i ON t (clock) ALGORITHM=INPLACE LOCK=NONE".into())
        );
        assert_eq!(
            classify("CREATE INDEX i ON t (k) LOCK=SHARED", Server::Mysql).unwrap(),
            Kind::Index("CREATE INDEX i ON t (k) LOCK=SHARED".into())
        );
        assert_eq!(
            classify("DROP INDEX IF EXISTS i", Server::Postgres).unwrap(),
            Kind::Index("DROP INDEX CONCURRENTLY IF EXISTS i".into())
        );
        assert_eq!(
            classify("DROP INDEX i CASCADE", Server::Postgres).unwrap(),
            Kind::Other
        );
        assert_eq!(
            classify("BEGIN", Server::Postgres).unwrap(),
            Kind::Transaction
        );
        assert_eq!(
            classify("CREATE TABLE t (id int)", Server::Postgres).unwrap(),
            Kind::Other
        );
    }
}
