//! Binlog values as SQL: how each column's values are decoded and written back. The kind comes
//! from the table's own schema (information_schema), not from the binlog's optional metadata,
//! so signedness and names are right whatever `binlog_row_metadata` is.

use std::fmt::Write;

use mysql_async::Value;

use crate::engine::watermark::KeyPart;

/// How a column's binlog values are replayed: decoded by the *source* column's definition and
/// written as a value of the source's type, so that the server converts it into the shadow's
/// column exactly as the copy's `INSERT … SELECT` (and the offline ALTER) does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Signed integers.
    Int,
    /// Unsigned integers of this many bits: the binlog carries them as signed.
    UInt(u32),
    /// DECIMAL: the digits as text.
    Decimal,
    /// FLOAT and DOUBLE: written as the exact double value (a FLOAT widened), whose shortest
    /// digits convert back to the same bits; the copy converts the same double.
    Float,
    /// Binary strings and BLOBs: bytes as they are.
    Bytes,
    /// Character strings (and MariaDB's JSON): bytes in the column's character set, written
    /// with that set's introducer so the server converts them as it converts the column.
    Text { charset: String },
    /// ENUM: the binlog carries the 1-based index; written as the member's text.
    Enum(Vec<String>),
    /// SET: the binlog carries a bitmap of members; written as the members' text.
    Set(Vec<String>),
    /// BIT: the bits, big-endian, written as their integer value.
    Bit,
    /// DATE, DATETIME, TIME.
    Temporal,
    /// TIMESTAMP: seconds since the epoch (with a fraction), replayed with FROM_UNIXTIME in a
    /// UTC session.
    Timestamp,
    /// YEAR: four digits as text.
    Year,
}

impl Kind {
    /// The kind of a column from information_schema's `data_type`, `column_type` and
    /// `character_set_name`; None for a type swivel cannot replay.
    pub fn of(data_type: &str, column_type: &str, charset: Option<&str>) -> Option<Kind> {
        let unsigned = column_type.contains("unsigned");
        let int = |bits| {
            if unsigned {
                Kind::UInt(bits)
            } else {
                Kind::Int
            }
        };
        let text = || match charset {
            Some(c) if c.eq_ignore_ascii_case("binary") => Kind::Bytes,
            Some(c) => Kind::Text {
                charset: c.to_ascii_lowercase(),
            },
            None => Kind::Bytes,
        };
        Some(match data_type {
            "tinyint" => int(8),
            "smallint" => int(16),
            "mediumint" => int(24),
            "int" | "integer" => int(32),
            "bigint" => int(64),
            "decimal" | "numeric" => Kind::Decimal,
            "float" | "double" | "real" => Kind::Float,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => text(),
            // MariaDB's JSON is LONGTEXT utf8mb4 with a check.
            "json" => Kind::Text {
                charset: charset.unwrap_or("utf8mb4").to_ascii_lowercase(),
            },
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Bytes,
            "enum" => Kind::Enum(members(column_type)?),
            "set" => Kind::Set(members(column_type)?),
            "bit" => Kind::Bit,
            "date" | "datetime" | "time" => Kind::Temporal,
            "timestamp" => Kind::Timestamp,
            "year" => Kind::Year,
            _ => return None,
        })
    }

    /// Correct what the binlog decoder cannot know without metadata: unsigned integers arrive
    /// as their signed bit pattern.
    pub fn fix(&self, v: Value) -> Value {
        match (self, v) {
            (Kind::UInt(bits), Value::Int(i)) if i < 0 => {
                let mask = if *bits == 64 {
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
    pub fn render(&self, v: &Value, sql: &mut String) -> Result<(), String> {
        match (self, v) {
            (_, Value::NULL) => sql.push_str("NULL"),
            (Kind::Enum(members), Value::Int(i)) => {
                // 0 is the empty "invalid" value that non-strict inserts store.
                let member = match usize::try_from(*i) {
                    Ok(0) => "",
                    Ok(n) => members.get(n - 1).ok_or_else(|| {
                        format!("ENUM index {n} beyond its {} members", members.len())
                    })?,
                    Err(_) => return Err(format!("ENUM index {i}")),
                };
                utf8_literal(member.as_bytes(), sql);
            }
            (Kind::Enum(_), Value::UInt(u)) => {
                return self.render(&Value::Int(i64::try_from(*u).unwrap_or(-1)), sql)
            }
            (Kind::Set(members), Value::Bytes(_) | Value::Int(_) | Value::UInt(_)) => {
                let bits = match v {
                    Value::Bytes(b) if b.len() <= 8 => b
                        .iter()
                        .rev()
                        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)),
                    Value::Bytes(b) => return Err(format!("a SET value of {} bytes", b.len())),
                    Value::Int(i) => *i as u64,
                    Value::UInt(u) => *u,
                    _ => 0,
                };
                if members.len() < 64 && bits >> members.len() != 0 {
                    return Err(format!(
                        "SET bits {bits:#x} beyond its {} members",
                        members.len()
                    ));
                }
                let text: Vec<&str> = members
                    .iter()
                    .enumerate()
                    .filter(|(n, _)| bits & (1 << n) != 0)
                    .map(|(_, m)| m.as_str())
                    .collect();
                utf8_literal(text.join(",").as_bytes(), sql);
            }
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
            (_, Value::Float(f)) => double_literal(f64::from(*f), sql)?,
            (_, Value::Double(f)) => double_literal(*f, sql)?,
            (Kind::Timestamp, Value::Bytes(b)) => {
                let secs = number(b)?;
                if secs.bytes().all(|c| c == b'0' || c == b'.') {
                    sql.push_str("'0000-00-00 00:00:00'");
                } else {
                    let _ = write!(sql, "FROM_UNIXTIME({secs})");
                }
            }
            (Kind::Decimal | Kind::Year, Value::Bytes(b)) => sql.push_str(number(b)?),
            (Kind::Bit, Value::Bytes(b)) => {
                if b.len() > 8 {
                    return Err(format!("a bit value of {} bytes", b.len()));
                }
                let n = b
                    .iter()
                    .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
                let _ = write!(sql, "{n}");
            }
            (Kind::Text { charset }, Value::Bytes(b)) => {
                // `_latin1 X'FC'` is the latin1 string ü: converted into the shadow's character
                // set by the server, as the copy converts it.
                let _ = write!(sql, "_{charset} ");
                hex_literal(b, sql);
            }
            (_, Value::Bytes(b)) => hex_literal(b, sql),
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

/// `X'…'` (or `''`): the bytes as a binary string.
fn hex_literal(b: &[u8], sql: &mut String) {
    if b.is_empty() {
        sql.push_str("''");
        return;
    }
    // A table lookup, not `write!` per byte: this is the applier's inner loop (5.5 µs for a
    // 180-byte sbtest row before, see benches/hot_paths.rs).
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    sql.reserve(b.len() * 2 + 3);
    sql.push_str("X'");
    for byte in b {
        sql.push(char::from(HEX[usize::from(byte >> 4)]));
        sql.push(char::from(HEX[usize::from(byte & 0xF)]));
    }
    sql.push('\'');
}

/// A utf8mb4 string (ENUM and SET members, as information_schema gives them).
fn utf8_literal(b: &[u8], sql: &mut String) {
    sql.push_str("_utf8mb4 ");
    hex_literal(b, sql);
}

/// The exact value of a double, as digits that read back to the same bits, typed as a double
/// (`E` makes the server read a double, not a DECIMAL).
fn double_literal(f: f64, sql: &mut String) -> Result<(), String> {
    if !f.is_finite() {
        return Err(format!("a float value {f}, which MySQL cannot store"));
    }
    let digits = format!("{f:?}");
    sql.push_str(&digits);
    if !digits.contains('e') {
        sql.push_str("E0");
    }
    Ok(())
}

/// The members of `enum('a','b')` or `set('a','b')` as information_schema writes them (quotes
/// doubled inside members).
pub(super) fn members(column_type: &str) -> Option<Vec<String>> {
    let open = column_type.find('(')?;
    let close = column_type.rfind(')')?;
    let list = column_type.get(open + 1..close)?;
    let mut members = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        if chars.next()? != '\'' {
            return None;
        }
        let mut member = String::new();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    member.push('\'');
                }
                '\'' => break,
                c => member.push(c),
            }
        }
        members.push(member);
        match chars.next() {
            None => return Some(members),
            Some(',') => {}
            Some(_) => return None,
        }
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
        let k = Kind::of("int", "int(10) unsigned", None).unwrap();
        assert_eq!(k.fix(Value::Int(-294_967_296)), Value::UInt(4_000_000_000));
        let k = Kind::of("bigint", "bigint(20) unsigned", None).unwrap();
        assert_eq!(k.fix(Value::Int(-1)), Value::UInt(u64::MAX));
        assert_eq!(Kind::Int.fix(Value::Int(-5)), Value::Int(-5));
    }

    #[test]
    fn members_are_read_from_the_column_type() {
        assert_eq!(
            members("enum('a','it''s','x,y')"),
            Some(vec!["a".into(), "it's".into(), "x,y".into()])
        );
        assert_eq!(members("set('')"), Some(vec!["".into()]));
        assert_eq!(members("enum('a"), None);
    }

    #[test]
    fn source_typed_literals() {
        let e = Kind::of("enum", "enum('sad','ok')", Some("utf8mb4")).unwrap();
        assert_eq!(lit(e.clone(), Value::Int(2)), "_utf8mb4 X'6F6B'");
        assert_eq!(lit(e.clone(), Value::Int(0)), "_utf8mb4 ''");
        assert!(e.render(&Value::Int(3), &mut String::new()).is_err());
        let set = Kind::of("set", "set('x','y','z')", Some("latin1")).unwrap();
        assert_eq!(
            lit(set.clone(), Value::Bytes(vec![5])),
            "_utf8mb4 X'782C7A'"
        );
        assert!(set
            .render(&Value::Bytes(vec![8]), &mut String::new())
            .is_err());
        let latin1 = Kind::of("varchar", "varchar(10)", Some("latin1")).unwrap();
        assert_eq!(lit(latin1, Value::Bytes(vec![0xFC])), "_latin1 X'FC'");
        assert_eq!(lit(Kind::Float, Value::Float(0.1)), "0.10000000149011612E0");
        assert_eq!(lit(Kind::Float, Value::Double(1e300)), "1e300");
        assert_eq!(lit(Kind::Float, Value::Double(-2.5)), "-2.5E0");
        assert_eq!(lit(Kind::Bit, Value::Bytes(vec![1, 5])), "261");
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
