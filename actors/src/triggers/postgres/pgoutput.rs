//! The messages of Postgres's `pgoutput` logical decoding plugin (protocol version 1), decoded
//! from the bytes of the replication stream's XLogData. Everything here comes from the network:
//! counts and lengths are checked against what is left before anything is allocated, and a
//! message that does not parse is an error naming what was wrong, never a panic.
//!
//! Layout: big-endian integers, NUL-terminated strings, LSNs as 64-bit integers, times as
//! microseconds since 2000-01-01. A tuple is `ncols: i16` then per column a kind byte: `n`
//! (null), `u` (an unchanged TOASTed value, not sent), `t` (text: `len: i32` + bytes) or `b`
//! (binary, the same shape).

/// A column of a relation, as its Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity (the key sent for updates and deletes).
    pub key: bool,
}

/// What an update's or delete's old row carries (`ALTER TABLE … REPLICA IDENTITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key.
    Default,
    Nothing,
    /// The whole old row.
    Full,
    /// A unique index's columns.
    Index,
}

/// A table, sent before the first change to it in a session and after its schema changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelColumn>,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// A TOASTed value the change did not touch: the server does not send it.
    UnchangedToast,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

pub type Tuple = Vec<Cell>;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_time_micros: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time_micros: i64,
    },
    Relation(Relation),
    Type {
        id: u32,
        schema: String,
        name: String,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    /// `key`: the old key when it changed (`K`); `old`: the whole old row with REPLICA
    /// IDENTITY FULL (`O`).
    Update {
        relation: u32,
        key: Option<Tuple>,
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        key: Option<Tuple>,
        old: Option<Tuple>,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// `pg_logical_emit_message` output.
    LogicalMessage {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message {tag:?}: {what}")]
pub struct DecodeError {
    pub tag: char,
    pub what: String,
}

/// Decodes one pgoutput message (the payload of one XLogData).
pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { data, pos: 0 };
    let tag = r.u8().map_err(|what| DecodeError { tag: '?', what })? as char;
    body(tag, &mut r).map_err(|what| DecodeError { tag, what })
}

fn body(tag: char, r: &mut Reader) -> Result<Message, String> {
    Ok(match tag {
        'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time_micros: r.i64()?,
            xid: r.u32()?,
        },
        'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time_micros: r.i64()?,
            }
        }
        'R' => Message::Relation(relation(r)?),
        'Y' => Message::Type {
            id: r.u32()?,
            schema: r.cstr()?,
            name: r.cstr()?,
        },
        'O' => Message::Origin {
            lsn: r.u64()?,
            name: r.cstr()?,
        },
        'I' => {
            let relation = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        'U' => {
            let relation = r.u32()?;
            let (mut key, mut old) = (None, None);
            let new = loop {
                match r.u8()? {
                    b'K' if key.is_none() && old.is_none() => key = Some(r.tuple()?),
                    b'O' if key.is_none() && old.is_none() => old = Some(r.tuple()?),
                    b'N' => break r.tuple()?,
                    other => return Err(format!("unexpected tuple kind {:?}", other as char)),
                }
            };
            Message::Update {
                relation,
                key,
                old,
                new,
            }
        }
        'D' => {
            let relation = r.u32()?;
            let (key, old) = match r.u8()? {
                b'K' => (Some(r.tuple()?), None),
                b'O' => (None, Some(r.tuple()?)),
                other => return Err(format!("unexpected tuple kind {:?}", other as char)),
            };
            Message::Delete { relation, key, old }
        }
        'T' => {
            let n = r.count_i32(4)?;
            let options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.cstr()?;
            let len = r.count_i32(1)?;
            Message::LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len)?.to_vec(),
            }
        }
        other => return Err(format!("unknown message type {other:?}")),
    })
}

fn relation(r: &mut Reader) -> Result<Relation, String> {
    let id = r.u32()?;
    let schema = r.cstr()?;
    let name = r.cstr()?;
    let replica_identity = match r.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(format!("unknown replica identity {:?}", other as char)),
    };
    // A column takes at least 10 bytes (flags, an empty name, type oid, type modifier).
    let n = r.count_i16(10)?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        let flags = r.u8()?;
        columns.push(RelColumn {
            name: r.cstr()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
            key: flags & 1 != 0,
        });
    }
    Ok(Relation {
        id,
        // pgoutput sends an empty namespace for pg_catalog.
        schema: if schema.is_empty() {
            "pg_catalog".into()
        } else {
            schema
        },
        name,
        replica_identity,
        columns,
    })
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "ends after {} bytes, {n} more expected at byte {}",
                    self.data.len(),
                    self.pos
                )
            })?;
        let out = self.data.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn expect(&mut self, want: u8) -> Result<(), String> {
        match self.u8()? {
            b if b == want => Ok(()),
            b => Err(format!(
                "expected {:?}, found {:?}",
                want as char, b as char
            )),
        }
    }

    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A count of items taking at least `min_size` bytes each: never more than what is left.
    fn count_i16(&mut self, min_size: usize) -> Result<usize, String> {
        let n = self.i16()?;
        self.bounded(i64::from(n), min_size)
    }

    fn count_i32(&mut self, min_size: usize) -> Result<usize, String> {
        let n = self.i32()?;
        self.bounded(i64::from(n), min_size)
    }

    fn bounded(&self, n: i64, min_size: usize) -> Result<usize, String> {
        let left = self.data.len().saturating_sub(self.pos);
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_size.max(1)) <= left || n == 0 => Ok(n),
            Ok(n) => Err(format!(
                "{n} items announced with {left} bytes left at byte {}",
                self.pos
            )),
            Err(_) => Err(format!("negative count {n} at byte {}", self.pos)),
        }
    }

    fn cstr(&mut self) -> Result<String, String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| format!("string at byte {} has no end", self.pos))?;
        let s = String::from_utf8_lossy(self.bytes(len)?).into_owned();
        self.pos += 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Tuple, String> {
        // A column takes at least its kind byte.
        let n = self.count_i16(1)?;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::UnchangedToast,
                b't' => {
                    let len = self.count_i32(1)?;
                    Cell::Text(self.bytes(len)?.to_vec())
                }
                b'b' => {
                    let len = self.count_i32(1)?;
                    Cell::Binary(self.bytes(len)?.to_vec())
                }
                other => return Err(format!("unknown column kind {:?}", other as char)),
            });
        }
        Ok(cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes pgoutput messages the way the server does.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn u8(mut self, b: u8) -> Self {
            self.0.push(b);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn s(mut self, s: &str) -> Self {
            self.0.extend(s.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, s: &str) -> Self {
            let mut w = self.u8(b't').i32(s.len() as i32);
            w.0.extend(s.as_bytes());
            w
        }
    }

    #[test]
    fn relations_and_row_changes_decode() {
        let rel = W::default()
            .u8(b'R')
            .i32(16384)
            .s("public")
            .s("orders")
            .u8(b'f')
            .i16(2)
            .u8(1)
            .s("id")
            .i32(23)
            .i32(-1)
            .u8(0)
            .s("note")
            .i32(25)
            .i32(-1);
        let Message::Relation(r) = decode(&rel.0).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(
            (r.id, r.schema.as_str(), r.name.as_str()),
            (16384, "public", "orders")
        );
        assert_eq!(r.replica_identity, ReplicaIdentity::Full);
        assert!(r.columns[0].key);
        assert_eq!(r.columns[1].type_oid, 25);

        let ins = W::default()
            .u8(b'I')
            .i32(16384)
            .u8(b'N')
            .i16(2)
            .text("7")
            .u8(b'n');
        assert_eq!(
            decode(&ins.0).unwrap(),
            Message::Insert {
                relation: 16384,
                new: vec![Cell::Text(b"7".to_vec()), Cell::Null]
            }
        );
        let upd = W::default()
            .u8(b'U')
            .i32(16384)
            .u8(b'O')
            .i16(2)
            .text("7")
            .text("a")
            .u8(b'N')
            .i16(2)
            .text("7")
            .u8(b'u');
        let Message::Update { old, key, new, .. } = decode(&upd.0).unwrap() else {
            panic!("not an update")
        };
        assert_eq!(key, None);
        assert_eq!(old.unwrap()[1], Cell::Text(b"a".to_vec()));
        assert_eq!(new[1], Cell::UnchangedToast);
        let del = W::default().u8(b'D').i32(16384).u8(b'K').i16(1).text("7");
        assert!(matches!(
            decode(&del.0).unwrap(),
            Message::Delete {
                key: Some(_),
                old: None,
                ..
            }
        ));
        let trunc = W::default().u8(b'T').i32(2).u8(3).i32(1).i32(2);
        assert_eq!(
            decode(&trunc.0).unwrap(),
            Message::Truncate {
                relations: vec![1, 2],
                cascade: true,
                restart_identity: true
            }
        );
        let begin = W::default().u8(b'B').u64(0x16B3748).u64(5).i32(731);
        assert_eq!(
            decode(&begin.0).unwrap(),
            Message::Begin {
                final_lsn: 0x16B3748,
                commit_time_micros: 5,
                xid: 731
            }
        );
    }

    #[test]
    fn damaged_messages_are_errors_not_panics() {
        // Truncated anywhere, announced counts larger than the message, negative lengths.
        let ins = W::default()
            .u8(b'I')
            .i32(1)
            .u8(b'N')
            .i16(2)
            .text("hello")
            .text("x")
            .0;
        for cut in 0..ins.len() {
            assert!(decode(&ins[..cut]).is_err(), "cut at {cut}");
        }
        let huge = W::default().u8(b'I').i32(1).u8(b'N').i16(i16::MAX).0;
        assert!(decode(&huge).unwrap_err().what.contains("items announced"));
        let negative = W::default()
            .u8(b'I')
            .i32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(-5)
            .0;
        assert!(decode(&negative).unwrap_err().what.contains("negative"));
        let trunc = W::default().u8(b'T').i32(i32::MAX).u8(0).0;
        assert!(decode(&trunc).is_err());
        assert!(decode(b"Z")
            .unwrap_err()
            .what
            .contains("unknown message type"));
        assert!(decode(b"").is_err());
        let no_nul = W::default()
            .u8(b'Y')
            .i32(1)
            .0
            .into_iter()
            .chain(*b"abc")
            .collect::<Vec<_>>();
        assert!(decode(&no_nul).unwrap_err().what.contains("no end"));
    }
}
