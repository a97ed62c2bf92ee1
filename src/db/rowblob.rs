//! The compact binary form of a row's field versions, stored in
//! `_cs_rows.state`: one SQLite row per replicated row instead of one per
//! field version keeps stamping and applying within a few statements per
//! row. Private to the database; the folder never sees it.
//!
//! Layout (version 1): `0x01`, varint field count, then per field: varint
//! name length, name, varint version count, then per version: 24-byte
//! stamp, the number of stamps in its base (one per site it had seen, so
//! the old flag byte 0/1 reads the same) and 24 bytes for each, a value tag
//! (0 null, 1 int, 2 real, 3 text, 4 blob) and its payload (8 bytes little
//! endian, or a varint length and the bytes). Version 2 (a tombstone that
//! says what its delete saw) starts with `0x02` and ends with that base: a
//! count byte and 24 bytes per stamp.

use std::collections::BTreeMap;

use crate::model::{Base, FieldState, FieldVersion, Hlc, SiteId, Value};

const VERSION: u8 = 1;
const VERSION_WITH_DELETE: u8 = 2;

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_hlc(out: &mut Vec<u8>, h: Hlc) {
    out.extend_from_slice(&h.wall_ms().to_be_bytes()[2..]);
    out.extend_from_slice(&h.counter().to_be_bytes());
    out.extend_from_slice(h.site().as_bytes());
}

fn put_base(out: &mut Vec<u8>, base: &Base) {
    // A base names at most one stamp per site; the format leaves a byte for
    // their number.
    let stamps = base.stamps();
    let n = stamps.len().min(u8::MAX as usize);
    out.push(n as u8);
    for b in &stamps[..n] {
        put_hlc(out, *b);
    }
}

pub(crate) fn encode(fields: &BTreeMap<String, FieldState>, deleted: &Base) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + fields.len() * 48);
    out.push(if deleted.is_empty() { VERSION } else { VERSION_WITH_DELETE });
    put_varint(&mut out, fields.len() as u64);
    for (name, state) in fields {
        put_varint(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        put_varint(&mut out, state.versions().len() as u64);
        for v in state.versions() {
            put_hlc(&mut out, v.hlc());
            put_base(&mut out, v.base());
            match v.value() {
                Value::Null => out.push(0),
                Value::Integer(i) => {
                    out.push(1);
                    out.extend_from_slice(&i.to_le_bytes());
                }
                Value::Real(r) => {
                    out.push(2);
                    out.extend_from_slice(&r.to_bits().to_le_bytes());
                }
                Value::Text(t) => {
                    out.push(3);
                    put_varint(&mut out, t.len() as u64);
                    out.extend_from_slice(t.as_bytes());
                }
                Value::Blob(b) => {
                    out.push(4);
                    put_varint(&mut out, b.len() as u64);
                    out.extend_from_slice(b);
                }
            }
        }
    }
    if !deleted.is_empty() {
        put_base(&mut out, deleted);
    }
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.varint()?).ok()?;
        (n <= self.bytes.len()).then_some(n)
    }

    fn base(&mut self) -> Option<Base> {
        let n = self.byte()?;
        let mut seen = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            seen.push(self.hlc()?);
        }
        Some(Base::new(seen))
    }

    fn hlc(&mut self) -> Option<Hlc> {
        let b = self.take(24)?;
        let mut wall = [0u8; 8];
        wall[2..].copy_from_slice(&b[..6]);
        let counter = u16::from_be_bytes([b[6], b[7]]);
        let site: [u8; 16] = b[8..24].try_into().ok()?;
        Some(Hlc::new(u64::from_be_bytes(wall), counter, SiteId::from_bytes(site)))
    }

    fn eight(&mut self) -> Option<[u8; 8]> {
        self.take(8)?.try_into().ok()
    }
}

/// Decodes a state blob into its fields and its delete's view; `None`
/// when it is damaged.
pub(crate) fn decode(bytes: &[u8]) -> Option<(BTreeMap<String, FieldState>, Base)> {
    let mut c = Cursor { bytes };
    let version = c.byte()?;
    if version != VERSION && version != VERSION_WITH_DELETE {
        return None;
    }
    let nfields = c.varint()?;
    let mut fields = BTreeMap::new();
    for _ in 0..nfields {
        let len = c.len()?;
        let name = std::str::from_utf8(c.take(len)?).ok()?.to_owned();
        let nversions = c.varint()?;
        let mut versions = Vec::with_capacity(nversions.min(16) as usize);
        for _ in 0..nversions {
            let hlc = c.hlc()?;
            let base = c.base()?;
            let value = match c.byte()? {
                0 => Value::Null,
                1 => Value::Integer(i64::from_le_bytes(c.eight()?)),
                2 => Value::Real(f64::from_bits(u64::from_le_bytes(c.eight()?))),
                3 => {
                    let len = c.len()?;
                    Value::Text(std::str::from_utf8(c.take(len)?).ok()?.to_owned())
                }
                4 => {
                    let len = c.len()?;
                    Value::Blob(c.take(len)?.to_vec())
                }
                _ => return None,
            };
            versions.push(FieldVersion::new(value, hlc, base).ok()?);
        }
        fields.insert(name, FieldState::from_versions(versions)?);
    }
    let deleted = if version == VERSION_WITH_DELETE { c.base()? } else { Base::default() };
    c.bytes.is_empty().then_some((fields, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_blobs_round_trip_and_damage_is_detected() {
        let site = SiteId::from_bytes([7; 16]);
        let h = |w| Hlc::new(w, 3, site);
        let mut fields = BTreeMap::new();
        for (i, value) in [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Real(-0.0),
            Value::Text("é\r\n".into()),
            Value::Blob(vec![0, 255]),
        ]
        .into_iter()
        .enumerate()
        {
            let other = Hlc::new(7, 0, SiteId::from_bytes([9; 16]));
            let v = FieldVersion::new(value, h(100 + i as u64), Base::new([h(5), other])).unwrap();
            fields.insert(format!("c{i}"), FieldState::single(v));
        }
        for deleted in [Base::default(), Base::new([h(200)])] {
            let bytes = encode(&fields, &deleted);
            assert_eq!(decode(&bytes).unwrap(), (fields.clone(), deleted));
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
            }
        }
    }
}
