//! Decoder for the pgoutput logical replication messages (protocol version 1) that
//! pgwire-replication hands over raw: Relation, Insert, Update, Delete, Truncate. Begin, Commit
//! and logical messages arrive already typed. Formats: PostgreSQL docs, "Logical Replication
//! Message Formats".

use bytes::{Buf, Bytes};

/// One column value of a tuple, in text format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the UPDATE did not change: not sent.
    Unchanged,
    Text(String),
}

pub type Tuple = Vec<Value>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: u32,
    pub is_key: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Relation {
        id: u32,
        namespace: String,
        name: String,
        columns: Vec<RelationColumn>,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    /// `old` is the key ('K', when the key changed) or the whole old row ('O', replica
    /// identity full); None when the key did not change.
    Update {
        relation: u32,
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: Tuple,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Type, Origin and other messages swivel has no use for.
    Other(u8),
}

#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(String);

fn need(buf: &Bytes, n: usize, what: &str) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        return Err(DecodeError(format!("truncated {what}")));
    }
    Ok(())
}

fn u8_(buf: &mut Bytes, what: &str) -> Result<u8, DecodeError> {
    need(buf, 1, what)?;
    Ok(buf.get_u8())
}

fn u32_(buf: &mut Bytes, what: &str) -> Result<u32, DecodeError> {
    need(buf, 4, what)?;
    Ok(buf.get_u32())
}

fn cstr(buf: &mut Bytes, what: &str) -> Result<String, DecodeError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| DecodeError(format!("unterminated string in {what}")))?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Ok(s)
}

fn tuple(buf: &mut Bytes) -> Result<Tuple, DecodeError> {
    need(buf, 2, "tuple")?;
    let n = buf.get_i16();
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        values.push(match u8_(buf, "tuple column")? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                let len = u32_(buf, "value length")? as usize;
                need(buf, len, "value")?;
                let v = buf.split_to(len);
                Value::Text(
                    String::from_utf8(v.to_vec())
                        .map_err(|_| DecodeError("value is not UTF-8".into()))?,
                )
            }
            b'b' => return Err(DecodeError("binary values are not requested".into())),
            other => return Err(DecodeError(format!("unknown tuple column kind {other}"))),
        });
    }
    Ok(values)
}

/// Decode one message (the payload of an XLogData).
pub fn decode(mut buf: Bytes) -> Result<Message, DecodeError> {
    let tag = u8_(&mut buf, "message")?;
    match tag {
        b'R' => {
            let id = u32_(&mut buf, "relation")?;
            let namespace = cstr(&mut buf, "relation namespace")?;
            let name = cstr(&mut buf, "relation name")?;
            let _replica_identity = u8_(&mut buf, "relation")?;
            need(&buf, 2, "relation")?;
            let n = buf.get_i16();
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let flags = u8_(&mut buf, "column flags")?;
                let name = cstr(&mut buf, "column name")?;
                let type_oid = u32_(&mut buf, "column type")?;
                let _typmod = u32_(&mut buf, "column typmod")?;
                columns.push(RelationColumn {
                    name,
                    type_oid,
                    is_key: flags & 1 == 1,
                });
            }
            Ok(Message::Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        b'I' => {
            let relation = u32_(&mut buf, "insert")?;
            match u8_(&mut buf, "insert")? {
                b'N' => Ok(Message::Insert {
                    relation,
                    new: tuple(&mut buf)?,
                }),
                k => Err(DecodeError(format!("insert without new tuple ({k})"))),
            }
        }
        b'U' => {
            let relation = u32_(&mut buf, "update")?;
            let mut kind = u8_(&mut buf, "update")?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(tuple(&mut buf)?);
                kind = u8_(&mut buf, "update")?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!("update without new tuple ({kind})")));
            }
            Ok(Message::Update {
                relation,
                old,
                new: tuple(&mut buf)?,
            })
        }
        b'D' => {
            let relation = u32_(&mut buf, "delete")?;
            match u8_(&mut buf, "delete")? {
                b'K' | b'O' => Ok(Message::Delete {
                    relation,
                    old: tuple(&mut buf)?,
                }),
                k => Err(DecodeError(format!("delete without old tuple ({k})"))),
            }
        }
        b'T' => {
            let n = u32_(&mut buf, "truncate")?;
            let _options = u8_(&mut buf, "truncate")?;
            let relations = (0..n)
                .map(|_| u32_(&mut buf, "truncate"))
                .collect::<Result<_, _>>()?;
            Ok(Message::Truncate { relations })
        }
        other => Ok(Message::Other(other)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    pub fn put_tuple(b: &mut BytesMut, values: &[Value]) {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Value::Null => b.put_u8(b'n'),
                Value::Unchanged => b.put_u8(b'u'),
                Value::Text(s) => {
                    b.put_u8(b't');
                    b.put_u32(s.len() as u32);
                    b.put_slice(s.as_bytes());
                }
            }
        }
    }

    fn t(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    #[test]
    fn relation() {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(16384);
        b.put_slice(b"public\0t\0");
        b.put_u8(b'd');
        b.put_i16(2);
        for (flags, name, oid) in [(1u8, "id", 23u32), (0, "v", 25)] {
            b.put_u8(flags);
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(oid);
            b.put_i32(-1);
        }
        let Message::Relation {
            id,
            namespace,
            name,
            columns,
        } = decode(b.freeze()).unwrap()
        else {
            panic!("not a relation")
        };
        assert_eq!(
            (id, namespace.as_str(), name.as_str()),
            (16384, "public", "t")
        );
        assert_eq!(columns.len(), 2);
        assert!(columns[0].is_key && !columns[1].is_key);
        assert_eq!(columns[1].type_oid, 25);
    }

    #[test]
    fn update_with_key_change_and_unchanged_toast() {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(7);
        b.put_u8(b'K');
        put_tuple(&mut b, &[t("1"), Value::Null]);
        b.put_u8(b'N');
        put_tuple(&mut b, &[t("2"), Value::Unchanged]);
        let m = decode(b.freeze()).unwrap();
        assert_eq!(
            m,
            Message::Update {
                relation: 7,
                old: Some(vec![t("1"), Value::Null]),
                new: vec![t("2"), Value::Unchanged]
            }
        );
    }

    #[test]
    fn insert_delete_truncate() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(7);
        b.put_u8(b'N');
        put_tuple(&mut b, &[t("1"), t("héllo")]);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Insert {
                relation: 7,
                new: vec![t("1"), t("héllo")]
            }
        );
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_u32(7);
        b.put_u8(b'K');
        put_tuple(&mut b, &[t("1"), Value::Null]);
        assert!(matches!(
            decode(b.freeze()).unwrap(),
            Message::Delete { relation: 7, .. }
        ));
        let mut b = BytesMut::new();
        b.put_u8(b'T');
        b.put_u32(2);
        b.put_u8(0);
        b.put_u32(7);
        b.put_u32(8);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Truncate {
                relations: vec![7, 8]
            }
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(7);
        b.put_u8(b'N');
        b.put_i16(1);
        b.put_u8(b't');
        b.put_u32(100);
        b.put_slice(b"short");
        assert!(decode(b.freeze()).is_err());
        assert!(decode(Bytes::new()).is_err());
        assert!(decode(Bytes::from_static(b"R\0\0")).is_err());
    }
}
