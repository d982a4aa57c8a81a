//! Binlog values as SQL: how each column's values are decoded and written back. The kind comes
//! from the table's own schema (information_schema), not from the binlog's optional metadata,
//! so signedness and names are right whatever `binlog_row_metadata` is.

use std::fmt::Write;

use mysql_async::Value;

use crate::watermark::KeyPart;

/// How a column's binlog values are replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Signed integers.
    Int,
    /// Unsigned integers of this many bits: the binlog carries them as signed.
    UInt(u32),
    /// DECIMAL: the digits as text.
    Decimal,
    Float,
    /// Character and binary strings, TEXT, BLOB, JSON (MariaDB stores it as text).
    Bytes,
    /// ENUM: the binlog carries the 1-based index, which the server accepts as such.
    Enum,
    /// SET and BIT: a bit pattern, written back as its integer value.
    Bits {
        little_endian: bool,
    },
    /// DATE, DATETIME, TIME.
    Temporal,
    /// TIMESTAMP: seconds since the epoch (with a fraction), replayed with FROM_UNIXTIME in a
    /// UTC session.
    Timestamp,
    /// YEAR: four digits as text.
    Year,
}

impl Kind {
    /// The kind of a column from information_schema's `data_type` and `column_type`; None for a
    /// type swivel cannot replay.
    pub fn of(data_type: &str, column_type: &str) -> Option<Kind> {
        let unsigned = column_type.contains("unsigned");
        let int = |bits| {
            if unsigned {
                Kind::UInt(bits)
            } else {
                Kind::Int
            }
        };
        Some(match data_type {
            "tinyint" => int(8),
            "smallint" => int(16),
            "mediumint" => int(24),
            "int" | "integer" => int(32),
            "bigint" => int(64),
            "decimal" | "numeric" => Kind::Decimal,
            "float" | "double" | "real" => Kind::Float,
            "char" | "varchar" | "binary" | "varbinary" | "tinytext" | "text" | "mediumtext"
            | "longtext" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "json" => Kind::Bytes,
            "enum" => Kind::Enum,
            "set" => Kind::Bits {
                little_endian: true,
            },
            "bit" => Kind::Bits {
                little_endian: false,
            },
            "date" | "datetime" | "time" => Kind::Temporal,
            "timestamp" => Kind::Timestamp,
            "year" => Kind::Year,
            _ => return None,
        })
    }

    /// Correct what the binlog decoder cannot know without metadata: unsigned integers arrive
    /// as their signed bit pattern.
    pub fn fix(self, v: Value) -> Value {
        match (self, v) {
            (Kind::UInt(bits), Value::Int(i)) if i < 0 => {
                let mask = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                Value::UInt((i as u64) & mask)
            }
            (_, v) => v,
        }
    }

    /// Append `v` to `sql` as a literal for a column of this kind.
    pub fn render(self, v: &Value, sql: &mut String) -> Result<(), String> {
        match (self, v) {
            (_, Value::NULL) => sql.push_str("NULL"),
            (Kind::Timestamp, Value::Int(0)) => sql.push_str("'0000-00-00 00:00:00'"),
            (Kind::Timestamp, Value::Int(secs)) => {
                let _ = write!(sql, "FROM_UNIXTIME({secs})");
            }
            (_, Value::Int(i)) => {
                let _ = write!(sql, "{i}");
            }
            (_, Value::UInt(u)) => {
                let _ = write!(sql, "{u}");
            }
            (_, Value::Float(f)) => {
                let _ = write!(sql, "{f:?}");
            }
            (_, Value::Double(f)) => {
                let _ = write!(sql, "{f:?}");
            }
            (Kind::Timestamp, Value::Bytes(b)) => {
                let secs = number(b)?;
                if secs.bytes().all(|c| c == b'0' || c == b'.') {
                    sql.push_str("'0000-00-00 00:00:00'");
                } else {
                    let _ = write!(sql, "FROM_UNIXTIME({secs})");
                }
            }
            (Kind::Decimal | Kind::Year, Value::Bytes(b)) => sql.push_str(number(b)?),
            (Kind::Bits { little_endian }, Value::Bytes(b)) => {
                if b.len() > 8 {
                    return Err(format!("a bit value of {} bytes", b.len()));
                }
                let fold = |acc: u64, byte: &u8| (acc << 8) | u64::from(*byte);
                let n = if little_endian {
                    b.iter().rev().fold(0, fold)
                } else {
                    b.iter().fold(0, fold)
                };
                let _ = write!(sql, "{n}");
            }
            (_, Value::Bytes(b)) => {
                if b.is_empty() {
                    sql.push_str("''");
                } else {
                    // A table lookup, not `write!` per byte: this is the applier's inner loop
                    // (5.5 µs for a 180-byte sbtest row before, see benches/hot_paths.rs).
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    sql.reserve(b.len() * 2 + 3);
                    sql.push_str("X'");
                    for byte in b {
                        sql.push(char::from(HEX[usize::from(byte >> 4)]));
                        sql.push(char::from(HEX[usize::from(byte & 0xF)]));
                    }
                    sql.push('\'');
                }
            }
            (_, Value::Date(y, mo, d, h, mi, s, us)) => {
                let _ = write!(sql, "'{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}'");
            }
            (_, Value::Time(neg, days, h, mi, s, us)) => {
                let sign = if *neg { "-" } else { "" };
                let hours = u64::from(*days) * 24 + u64::from(*h);
                let _ = write!(sql, "'{sign}{hours:02}:{mi:02}:{s:02}.{us:06}'");
            }
        }
        Ok(())
    }
}

/// Digits (and sign, point, exponent) as sent for DECIMAL, YEAR and TIMESTAMP: checked, so
/// they can be written into a statement as they are.
fn number(b: &[u8]) -> Result<&str, String> {
    let ok = !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'));
    match std::str::from_utf8(b) {
        Ok(s) if ok => Ok(s),
        _ => Err(format!(
            "an unexpected numeric value {:?}",
            String::from_utf8_lossy(b)
        )),
    }
}

/// One key column's value as the watermark compares it.
pub fn key_part(v: &Value) -> Option<KeyPart> {
    match v {
        Value::Int(i) => Some(KeyPart::Int(i128::from(*i))),
        Value::UInt(u) => Some(KeyPart::Int(i128::from(*u))),
        Value::Bytes(b) => String::from_utf8(b.clone()).ok().map(KeyPart::Text),
        _ => None,
    }
}

/// A key part as a statement parameter.
pub fn key_param(k: &KeyPart) -> Value {
    match k {
        KeyPart::Int(i) => match i64::try_from(*i) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(*i as u64),
        },
        KeyPart::Text(s) => Value::Bytes(s.clone().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(kind: Kind, v: Value) -> String {
        let mut s = String::new();
        kind.render(&v, &mut s).unwrap();
        s
    }

    #[test]
    fn unsigned_values_are_corrected() {
        let k = Kind::of("int", "int(10) unsigned").unwrap();
        assert_eq!(k.fix(Value::Int(-294_967_296)), Value::UInt(4_000_000_000));
        let k = Kind::of("bigint", "bigint(20) unsigned").unwrap();
        assert_eq!(k.fix(Value::Int(-1)), Value::UInt(u64::MAX));
        assert_eq!(Kind::Int.fix(Value::Int(-5)), Value::Int(-5));
    }

    #[test]
    fn literals() {
        assert_eq!(lit(Kind::Bytes, Value::Bytes(b"a'b".to_vec())), "X'612762'");
        assert_eq!(lit(Kind::Bytes, Value::Bytes(vec![])), "''");
        assert_eq!(
            lit(Kind::Decimal, Value::Bytes(b"-12.50".to_vec())),
            "-12.50"
        );
        assert_eq!(
            lit(Kind::Timestamp, Value::Bytes(b"1700000000.250000".to_vec())),
            "FROM_UNIXTIME(1700000000.250000)"
        );
        assert_eq!(
            lit(
                Kind::Bits {
                    little_endian: true
                },
                Value::Bytes(vec![5, 1])
            ),
            "261"
        );
        assert_eq!(
            lit(Kind::Temporal, Value::Date(2026, 11, 2, 3, 4, 5, 6)),
            "'2026-11-02 03:04:05.000006'"
        );
        assert_eq!(
            lit(Kind::Temporal, Value::Time(true, 1, 2, 3, 4, 0)),
            "'-26:03:04.000000'"
        );
        assert_eq!(lit(Kind::Int, Value::NULL), "NULL");
        let mut s = String::new();
        assert!(Kind::Decimal
            .render(&Value::Bytes(b"1; DROP".to_vec()), &mut s)
            .is_err());
    }
}
