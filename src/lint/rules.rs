//! The rules, one statement at a time. Names follow squawk's where squawk has the rule, so a
//! team's ignore lists carry over; each finding says what to do instead.

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, AlterTypeOperation, CascadeOption, ColumnDef,
    ColumnOption, DataType, ObjectType, Statement, TableConstraint, TimezoneInfo,
};

use super::Server;
use crate::engine::plan::is_constant;

/// A rule's stable name, what is wrong and what to do.
pub struct Rule {
    pub name: &'static str,
    pub servers: &'static [Server],
    pub message: &'static str,
    pub help: &'static str,
}

const BOTH: &[Server] = &[Server::Postgres, Server::Mysql];
const PG: &[Server] = &[Server::Postgres];

pub const RULES: &[Rule] = &[
    Rule {
        name: "adding-required-field",
        servers: BOTH,
        message: "adding a NOT NULL column without a default fails on a table with rows, or \
                  breaks the inserts of code that does not know the column yet",
        help: "add it with a DEFAULT, or nullable, then backfill and SET NOT NULL in a later \
               migration",
    },
    Rule {
        name: "adding-field-with-default",
        servers: BOTH,
        message: "a column with a volatile default (a function call) is filled row by row: the \
                  table is rewritten under an exclusive lock",
        help: "add the column without the default, set the default, backfill in batches; or \
               run the ALTER with `swivel run`, which copies the table online",
    },
    Rule {
        name: "changing-column-type",
        servers: BOTH,
        message: "changing a column's type rewrites the table (and its indexes) under an \
                  exclusive lock",
        help: "run it with `swivel run`, which copies the table online; run plainly, it blocks \
               writes for the whole rewrite",
    },
    Rule {
        name: "ban-drop-column",
        servers: BOTH,
        message: "dropping a column breaks the code still reading it, and its data is gone",
        help: "stop using the column in the code first and deploy; drop it in a later migration",
    },
    Rule {
        name: "ban-drop-table",
        servers: BOTH,
        message: "dropping a table breaks the code still using it, and its data is gone",
        help: "stop using the table first and deploy; rename it aside before dropping it",
    },
    Rule {
        name: "renaming-column",
        servers: BOTH,
        message: "renaming a column breaks the code using the old name the moment it runs",
        help: "add the new column, write both, backfill, move the reads, then drop the old one",
    },
    Rule {
        name: "renaming-table",
        servers: BOTH,
        message: "renaming a table breaks the code using the old name the moment it runs",
        help: "create the new table (or a view under the old name), move the code, then drop \
               the old name",
    },
    Rule {
        name: "adding-not-nullable-field",
        servers: PG,
        message: "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock",
        help: "ADD CONSTRAINT … CHECK (col IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT, then \
               SET NOT NULL (it uses the validated check and skips the scan)",
    },
    Rule {
        name: "adding-foreign-key-constraint",
        servers: BOTH,
        message: "adding a foreign key checks every row while it locks both tables",
        help: "PostgreSQL: ADD CONSTRAINT … NOT VALID, then VALIDATE CONSTRAINT in another \
               migration; MySQL: add it with `swivel run`, which copies the table online",
    },
    Rule {
        name: "constraint-missing-not-valid",
        servers: PG,
        message: "adding a CHECK constraint scans the table under an ACCESS EXCLUSIVE lock",
        help: "ADD CONSTRAINT … NOT VALID, then VALIDATE CONSTRAINT in another migration (it \
               takes a weaker lock)",
    },
    Rule {
        name: "disallowed-unique-constraint",
        servers: PG,
        message: "adding a UNIQUE or PRIMARY KEY constraint builds its index under an ACCESS \
                  EXCLUSIVE lock",
        help: "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT … USING INDEX",
    },
    Rule {
        name: "require-concurrent-index-creation",
        servers: PG,
        message: "CREATE INDEX without CONCURRENTLY blocks writes to the table while it builds",
        help: "CREATE INDEX CONCURRENTLY, outside a transaction",
    },
    Rule {
        name: "require-concurrent-index-deletion",
        servers: PG,
        message: "DROP INDEX without CONCURRENTLY takes an exclusive lock on the table: reads and \
                  writes queue behind it, and behind any long transaction it waits for",
        help: "DROP INDEX CONCURRENTLY, outside a transaction (swivel migrate does this itself)",
    },
    Rule {
        name: "ban-concurrent-index-creation-in-transaction",
        servers: PG,
        message: "CREATE INDEX CONCURRENTLY cannot run inside a transaction block",
        help: "take it out of the BEGIN … COMMIT and run it on its own",
    },
    Rule {
        name: "renaming-enum-value",
        servers: PG,
        message: "renaming an enum value breaks the code and the rows' readers that use the old \
                  value",
        help: "add the new value, move the rows and the code to it, stop using the old one",
    },
    Rule {
        name: "prefer-bigint-over-int",
        servers: BOTH,
        message: "a 32-bit integer primary key runs out at 2,147,483,647 rows, and widening it \
                  later rewrites the table",
        help: "use bigint (bigserial, or bigint GENERATED … AS IDENTITY; BIGINT AUTO_INCREMENT)",
    },
    Rule {
        name: "ban-char-field",
        servers: BOTH,
        message: "char(n) pads with spaces and compares surprisingly; changing n rewrites the \
                  table",
        help: "use text (PostgreSQL) or varchar(n) (MySQL)",
    },
    Rule {
        name: "prefer-timestamptz",
        servers: PG,
        message: "timestamp without time zone stores no zone: the values mean whatever the \
                  writer's clock meant",
        help: "use timestamptz",
    },
    Rule {
        name: "prefer-bigint-over-smallint",
        servers: BOTH,
        message: "a 16-bit integer primary key runs out at 32,767 rows, and widening it later \
                  rewrites the table",
        help: "use bigint",
    },
    Rule {
        name: "prefer-identity",
        servers: PG,
        message: "serial columns own a separate sequence whose permissions and dependencies \
                  are managed apart from the table",
        help: "use bigint GENERATED BY DEFAULT AS IDENTITY",
    },
    Rule {
        name: "prefer-text-field",
        servers: PG,
        message: "varchar(n): raising n is cheap, but lowering it or changing the type later \
                  rewrites the table under an exclusive lock",
        help: "use text with a CHECK (length(col) <= n) constraint, changed NOT VALID",
    },
    Rule {
        name: "ban-drop-not-null",
        servers: PG,
        message: "dropping NOT NULL lets NULLs in that the code reading the column may not \
                  expect",
        help: "make sure every reader handles NULL first, then drop the constraint",
    },
    Rule {
        name: "ban-drop-database",
        servers: BOTH,
        message: "dropping a database in a migration destroys everything in it",
        help: "do it by hand, deliberately, never from a migration",
    },
    Rule {
        name: "ban-truncate-cascade",
        servers: PG,
        message: "TRUNCATE … CASCADE also empties every table with a foreign key to this one, \
                  whatever their names",
        help: "truncate the tables you mean by name",
    },
    Rule {
        name: "missing-down",
        servers: BOTH,
        message: "the migration has no `-- +swivel Down` section: it cannot be rolled back",
        help: "add a Down section that undoes the Up (an empty one says on purpose that there \
               is nothing to undo)",
    },
    Rule {
        name: "down-loses-data",
        servers: BOTH,
        message: "the Down section drops a table or a column: rolling back loses what was \
                  written to it since",
        help: "keep the data (rename the table or column aside) if a rollback must not lose it, \
               or ignore the rule to say the loss is intended",
    },
];

pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name == name)
}

/// The rules `statement` breaks. `in_transaction`: inside an explicit BEGIN … COMMIT.
pub fn check(statement: &Statement, server: Server, in_transaction: bool) -> Vec<&'static str> {
    let mut found = Vec::new();
    match statement {
        Statement::AlterTable { operations, .. } => {
            for op in operations {
                alter_operation(op, server, &mut found);
            }
        }
        Statement::CreateTable(create) => {
            let table_pk: Vec<String> = create
                .constraints
                .iter()
                .filter_map(|c| match c {
                    TableConstraint::PrimaryKey { columns, .. } => Some(columns),
                    _ => None,
                })
                .flatten()
                .map(|c| c.column.expr.to_string())
                .collect();
            for column in &create.columns {
                column_types(column, server, &mut found);
                let is_pk = column.options.iter().any(|o| {
                    matches!(
                        o.option,
                        ColumnOption::Unique {
                            is_primary: true,
                            ..
                        }
                    )
                }) || table_pk.iter().any(|n| *n == column.name.to_string());
                if is_pk && is_int32(&column.data_type) {
                    found.push("prefer-bigint-over-int");
                }
                if is_pk && matches!(column.data_type, DataType::SmallInt(_) | DataType::Int2(_)) {
                    found.push("prefer-bigint-over-smallint");
                }
            }
        }
        Statement::CreateIndex(index) if server == Server::Postgres => {
            if !index.concurrently {
                found.push("require-concurrent-index-creation");
            } else if in_transaction {
                found.push("ban-concurrent-index-creation-in-transaction");
            }
        }
        Statement::Drop {
            object_type: ObjectType::Table,
            ..
        } => found.push("ban-drop-table"),
        // sqlparser reads no CONCURRENTLY here: a parsed DROP INDEX is a plain one.
        Statement::Drop {
            object_type: ObjectType::Index,
            ..
        } if server == Server::Postgres => found.push("require-concurrent-index-deletion"),
        Statement::Drop {
            object_type: ObjectType::Database | ObjectType::Schema,
            ..
        } => found.push("ban-drop-database"),
        Statement::Truncate {
            cascade: Some(CascadeOption::Cascade),
            ..
        } => found.push("ban-truncate-cascade"),
        Statement::RenameTable(_) => found.push("renaming-table"),
        Statement::AlterType(alter) => {
            if matches!(alter.operation, AlterTypeOperation::RenameValue(_)) {
                found.push("renaming-enum-value");
            }
        }
        _ => {}
    }
    found.retain(|name| rule(name).is_some_and(|r| r.servers.contains(&server)));
    found
}

fn alter_operation(op: &AlterTableOperation, server: Server, found: &mut Vec<&'static str>) {
    match op {
        AlterTableOperation::AddColumn { column_def, .. } => {
            let not_null = column_def
                .options
                .iter()
                .any(|o| matches!(o.option, ColumnOption::NotNull));
            let default = column_def.options.iter().find_map(|o| match &o.option {
                ColumnOption::Default(e) => Some(e),
                _ => None,
            });
            let generated = column_def.options.iter().any(|o| {
                matches!(
                    o.option,
                    ColumnOption::Generated { .. } | ColumnOption::Identity(_)
                )
            });
            if not_null && default.is_none() && !generated && !is_serial(&column_def.data_type) {
                found.push("adding-required-field");
            }
            if default.is_some_and(|e| !is_constant(e)) {
                found.push("adding-field-with-default");
            }
            column_types(column_def, server, found);
        }
        AlterTableOperation::AlterColumn { op, .. } => match op {
            AlterColumnOperation::SetDataType { .. } => found.push("changing-column-type"),
            AlterColumnOperation::SetNotNull => found.push("adding-not-nullable-field"),
            AlterColumnOperation::DropNotNull => found.push("ban-drop-not-null"),
            _ => {}
        },
        AlterTableOperation::ModifyColumn { .. } => found.push("changing-column-type"),
        AlterTableOperation::ChangeColumn {
            old_name, new_name, ..
        } => {
            found.push("changing-column-type");
            if old_name != new_name {
                found.push("renaming-column");
            }
        }
        AlterTableOperation::DropColumn { .. } => found.push("ban-drop-column"),
        AlterTableOperation::RenameColumn { .. } => found.push("renaming-column"),
        AlterTableOperation::RenameTable { .. } => found.push("renaming-table"),
        AlterTableOperation::AddConstraint {
            constraint,
            not_valid,
        } => match constraint {
            TableConstraint::ForeignKey { .. } if !not_valid || server == Server::Mysql => {
                found.push("adding-foreign-key-constraint")
            }
            TableConstraint::Check { .. } if !not_valid => {
                found.push("constraint-missing-not-valid")
            }
            TableConstraint::Unique { .. } | TableConstraint::PrimaryKey { .. } => {
                found.push("disallowed-unique-constraint")
            }
            _ => {}
        },
        _ => {}
    }
}

/// Column types the rules frown on, wherever a column is declared.
fn column_types(column: &ColumnDef, server: Server, found: &mut Vec<&'static str>) {
    if is_serial(&column.data_type) {
        found.push("prefer-identity");
    }
    match &column.data_type {
        DataType::Char(_) | DataType::Character(_) => found.push("ban-char-field"),
        DataType::Varchar(Some(_)) | DataType::CharacterVarying(Some(_)) => {
            found.push("prefer-text-field")
        }
        DataType::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone)
            if server == Server::Postgres =>
        {
            found.push("prefer-timestamptz")
        }
        _ => {}
    }
}

/// serial types: filled from a sequence of their own (not an identity).
fn is_serial(t: &DataType) -> bool {
    t.to_string().to_ascii_lowercase().contains("serial")
}

fn is_int32(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int(_) | DataType::Integer(_) | DataType::Int4(_) | DataType::MediumInt(_)
    ) || matches!(
        t.to_string().to_ascii_lowercase().as_str(),
        "serial" | "serial4"
    )
}
