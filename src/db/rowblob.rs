//! The compact binary form of a row's field versions, stored in
//! `_cs_rows.state`: one SQLite row per replicated row instead of one per
//! field version keeps stamping and applying within a few statements per
//! row. Private to the database; the folder never sees it.
//!
//! Layout (versions 3 and 4, written since commit e5aff08): the tag byte (`0x03`,
//! or `0x04` for a row whose tombstone says what its delete saw), a varint
//! count and that many 24-byte stamps: every distinct stamp the row names,
//! each written once (a row changed in one edit has one stamp for all its
//! fields); then a varint field count, and per field: varint name length,
//! name, varint version count, then per version: the varint index of its
//! stamp in that table, its base (a count byte and the varint index of each
//! stamp), a value tag (0 null, 1 int, 2 real, 3 text, 4 blob) and its
//! payload (8 bytes little endian, or a varint length and the bytes). A
//! `0x04` blob ends with its delete's base, in the same form.
//!
//! Earlier databases hold versions 1 and 2, which are still read: `0x01`,
//! the fields as above but with each stamp written out in full (24 bytes)
//! where version 3 has an index; `0x02` also ends with the delete's base
//! (a count byte and 24 bytes per stamp). A stamp is 6 bytes of wall
//! clock (big endian), 2 of counter and the site's 16.

use std::collections::BTreeMap;

use crate::model::{Base, FieldState, FieldVersion, Hlc, SiteId, Value};
use crate::xmlstore::{RowSource, ValueRef, VersionRef};

const VERSION: u8 = 1;
const VERSION_WITH_DELETE: u8 = 2;
const SHARED: u8 = 3;
const SHARED_WITH_DELETE: u8 = 4;

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

/// The row's distinct stamps, in the order first named. Rows name a
/// handful at most, so a linear search beats hashing.
#[derive(Default)]
struct Stamps(Vec<Hlc>);

impl Stamps {
    fn index(&mut self, h: Hlc) -> usize {
        match self.0.iter().position(|s| *s == h) {
            Some(i) => i,
            None => {
                self.0.push(h);
                self.0.len() - 1
            }
        }
    }

    fn put_base(&mut self, out: &mut Vec<u8>, base: &Base) {
        // A base names at most one stamp per site; the format leaves a byte
        // for their number.
        let stamps = base.stamps();
        let n = stamps.len().min(u8::MAX as usize);
        out.push(n as u8);
        for b in &stamps[..n] {
            put_varint(out, self.index(*b) as u64);
        }
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
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
            put_varint(out, t.len() as u64);
            out.extend_from_slice(t.as_bytes());
        }
        Value::Blob(b) => {
            out.push(4);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
}

pub(crate) fn encode(fields: &BTreeMap<String, FieldState>, deleted: &Base) -> Vec<u8> {
    // The fields first, into `body`, to learn the stamps they name.
    let mut stamps = Stamps::default();
    let mut body = Vec::with_capacity(16 + fields.len() * 24);
    put_varint(&mut body, fields.len() as u64);
    for (name, state) in fields {
        put_varint(&mut body, name.len() as u64);
        body.extend_from_slice(name.as_bytes());
        put_varint(&mut body, state.versions().len() as u64);
        for v in state.versions() {
            put_varint(&mut body, stamps.index(v.hlc()) as u64);
            stamps.put_base(&mut body, v.base());
            put_value(&mut body, v.value());
        }
    }
    if !deleted.is_empty() {
        stamps.put_base(&mut body, deleted);
    }
    let mut out = Vec::with_capacity(4 + stamps.0.len() * 24 + body.len());
    out.push(if deleted.is_empty() { SHARED } else { SHARED_WITH_DELETE });
    put_varint(&mut out, stamps.0.len() as u64);
    for h in &stamps.0 {
        put_hlc(&mut out, *h);
    }
    out.extend_from_slice(&body);
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

    /// A base: a count byte, then each stamp, read by `stamp`.
    fn base(&mut self, mut stamp: impl FnMut(&mut Self) -> Option<Hlc>) -> Option<Base> {
        let n = self.byte()?;
        let mut seen = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            seen.push(stamp(self)?);
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

    /// A value: its tag, then 8 bytes or a varint length and the bytes.
    fn value(&mut self) -> Option<ValueRef<'a>> {
        Some(match self.byte()? {
            0 => ValueRef::Null,
            1 => ValueRef::Integer(i64::from_le_bytes(self.eight()?)),
            2 => ValueRef::Real(f64::from_bits(u64::from_le_bytes(self.eight()?))),
            3 => {
                let len = self.len()?;
                ValueRef::Text(std::str::from_utf8(self.take(len)?).ok()?)
            }
            4 => {
                let len = self.len()?;
                ValueRef::Blob(self.take(len)?)
            }
            _ => return None,
        })
    }
}

/// Decodes a state blob into its fields and its delete's view; `None`
/// when it is damaged.
pub(crate) fn decode(bytes: &[u8]) -> Option<(BTreeMap<String, FieldState>, Base)> {
    let mut c = Cursor { bytes };
    let version = c.byte()?;
    let (shared, with_delete) = match version {
        VERSION => (false, false),
        VERSION_WITH_DELETE => (false, true),
        SHARED => (true, false),
        SHARED_WITH_DELETE => (true, true),
        _ => return None,
    };
    let mut table = Vec::new();
    if shared {
        let n = c.varint()?;
        // Each stamp takes 24 bytes: a count the blob cannot hold is damage.
        if n > (c.bytes.len() / 24) as u64 {
            return None;
        }
        for _ in 0..n {
            table.push(c.hlc()?);
        }
    }
    let stamp = |c: &mut Cursor<'_>| {
        if shared { table.get(usize::try_from(c.varint()?).ok()?).copied() } else { c.hlc() }
    };
    let nfields = c.varint()?;
    let mut fields = BTreeMap::new();
    for _ in 0..nfields {
        let len = c.len()?;
        let name = std::str::from_utf8(c.take(len)?).ok()?.to_owned();
        let nversions = c.varint()?;
        let mut versions = Vec::with_capacity(nversions.min(16) as usize);
        for _ in 0..nversions {
            let hlc = stamp(&mut c)?;
            let base = c.base(stamp)?;
            let value = c.value()?.to_value();
            versions.push(FieldVersion::new(value, hlc, base).ok()?);
        }
        fields.insert(name, FieldState::from_versions(versions)?);
    }
    let deleted = if with_delete { c.base(stamp)? } else { Base::default() };
    c.bytes.is_empty().then_some((fields, deleted))
}

/// A state blob read in place, for writing a patient file without decoding
/// the row into a [`RowState`](crate::model::RowState) first (the file
/// stage and read-repair write or compare every file of the patients they
/// touch). It takes only blobs whose decoding would give back exactly what
/// they hold, in the order they hold it: layout 3 or 4, fields in strictly
/// ascending name order, one version each, bases sorted by site, every
/// base before its stamp, nothing left over. Anything else (an older
/// layout, a field with concurrent versions, damage) is refused, and the
/// caller decodes the row instead, so both ways give the same bytes or the
/// same error.
#[derive(Default)]
pub(crate) struct RowView<'a> {
    cl: u64,
    stamps: Vec<Hlc>,
    /// Every base's stamps, one base after another.
    bases: Vec<Hlc>,
    /// Per field: its name, its version's stamp, its base (a range of
    /// `bases`) and its value.
    fields: Vec<(&'a str, Hlc, (usize, usize), ValueRef<'a>)>,
    deleted: (usize, usize),
}

impl<'a> RowView<'a> {
    /// Reads a row's `_cs_rows` columns, replacing what the view held;
    /// `None` when the blob is not one the view takes.
    pub(crate) fn read(&mut self, cl: i64, bytes: &'a [u8]) -> Option<()> {
        self.cl = cl as u64;
        self.stamps.clear();
        self.bases.clear();
        self.fields.clear();
        self.deleted = (0, 0);
        let mut c = Cursor { bytes };
        let with_delete = match c.byte()? {
            SHARED => false,
            SHARED_WITH_DELETE => true,
            _ => return None,
        };
        let n = c.varint()?;
        if n > (c.bytes.len() / 24) as u64 {
            return None;
        }
        for _ in 0..n {
            self.stamps.push(c.hlc()?);
        }
        let nfields = c.varint()?;
        let mut last: Option<&str> = None;
        for _ in 0..nfields {
            let len = c.len()?;
            let name = std::str::from_utf8(c.take(len)?).ok()?;
            if last.is_some_and(|last| last >= name) || c.varint()? != 1 {
                return None;
            }
            last = Some(name);
            let hlc = self.stamp(&mut c)?;
            let base = self.base(&mut c)?;
            if self.bases[base.0..base.1].iter().any(|b| *b >= hlc) {
                return None;
            }
            let value = c.value()?;
            self.fields.push((name, hlc, base, value));
        }
        if with_delete {
            self.deleted = self.base(&mut c)?;
        }
        c.bytes.is_empty().then_some(())
    }

    fn stamp(&self, c: &mut Cursor<'_>) -> Option<Hlc> {
        self.stamps.get(usize::try_from(c.varint()?).ok()?).copied()
    }

    /// A base's stamps appended to `bases`: its range there, or `None`
    /// unless they are sorted by site, one per site (as `Base` keeps them).
    fn base(&mut self, c: &mut Cursor<'_>) -> Option<(usize, usize)> {
        let n = c.byte()?;
        let start = self.bases.len();
        for _ in 0..n {
            let h = self.stamp(c)?;
            if self.bases[start..].last().is_some_and(|prev| prev.site() >= h.site()) {
                return None;
            }
            self.bases.push(h);
        }
        Some((start, self.bases.len()))
    }
}

impl RowSource for RowView<'_> {
    fn cl(&self) -> u64 {
        self.cl
    }

    fn deleted(&self) -> &[Hlc] {
        &self.bases[self.deleted.0..self.deleted.1]
    }

    fn versions(&self) -> impl Iterator<Item = (&str, VersionRef<'_>)> {
        self.fields.iter().map(|&(name, hlc, (start, end), value)| {
            (name, VersionRef { hlc, base: &self.bases[start..end], value })
        })
    }
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
            assert_eq!(decode(&bytes).unwrap(), (fields.clone(), deleted.clone()));
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
            }
            // The in-place view takes the whole blob, and no cut of it.
            let mut view = RowView::default();
            assert_eq!(view.read(1, &bytes), Some(()));
            assert_eq!(RowSource::deleted(&view), deleted.stamps());
            assert_eq!(view.versions().count(), fields.len());
            for cut in 0..bytes.len() {
                assert!(view.read(1, &bytes[..cut]).is_none(), "view, cut at {cut}");
            }
            // What earlier versions wrote still reads the same.
            let old = encode_v1(&fields, &deleted);
            assert_eq!(decode(&old).unwrap(), (fields.clone(), deleted));
            for cut in 0..old.len() {
                assert!(decode(&old[..cut]).is_none(), "cut at {cut}");
            }
            // The view leaves them to the decoder.
            assert!(RowView::default().read(1, &old).is_none());
        }
    }

    #[test]
    fn a_row_changed_in_one_edit_writes_its_stamp_once() {
        let h = Hlc::new(1_000, 0, SiteId::from_bytes([7; 16]));
        let fields: BTreeMap<String, FieldState> = (0..7)
            .map(|i| {
                let v = FieldVersion::new(Value::Integer(i), h, Base::default()).unwrap();
                (format!("c{i}"), FieldState::single(v))
            })
            .collect();
        let bytes = encode(&fields, &Base::default());
        // Each field names its stamp in one byte instead of 24; the table
        // costs its count and the stamp once.
        assert_eq!(encode_v1(&fields, &Base::default()).len() - bytes.len(), 7 * 23 - 25);
        assert_eq!(decode(&bytes).unwrap().0, fields);
    }

    #[test]
    fn a_stamp_index_outside_the_table_is_damage() {
        let h = Hlc::new(1_000, 0, SiteId::from_bytes([7; 16]));
        let v = FieldVersion::new(Value::Null, h, Base::default()).unwrap();
        let fields = BTreeMap::from([("c".to_owned(), FieldState::single(v))]);
        let mut bytes = encode(&fields, &Base::default());
        // 0x03, 1 stamp, the stamp, 1 field, name length 1, "c", 1 version,
        // then the version's stamp index.
        let at = 2 + 24 + 4;
        assert_eq!(bytes[at], 0);
        bytes[at] = 1;
        assert!(decode(&bytes).is_none());
        let mut huge = vec![SHARED];
        put_varint(&mut huge, u64::MAX);
        assert!(decode(&huge).is_none());
    }

    /// The layout of versions 1 and 2, as earlier databases hold it.
    fn encode_v1(fields: &BTreeMap<String, FieldState>, deleted: &Base) -> Vec<u8> {
        let put_base = |out: &mut Vec<u8>, base: &Base| {
            out.push(base.stamps().len() as u8);
            for b in base.stamps() {
                put_hlc(out, *b);
            }
        };
        let mut out = vec![if deleted.is_empty() { VERSION } else { VERSION_WITH_DELETE }];
        put_varint(&mut out, fields.len() as u64);
        for (name, state) in fields {
            put_varint(&mut out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
            put_varint(&mut out, state.versions().len() as u64);
            for v in state.versions() {
                put_hlc(&mut out, v.hlc());
                put_base(&mut out, v.base());
                put_value(&mut out, v.value());
            }
        }
        if !deleted.is_empty() {
            put_base(&mut out, deleted);
        }
        out
    }
}
