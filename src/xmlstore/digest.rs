//! The rows digest of a patient file: the sum of the SHA-256 of each
//! `<row>` element's bytes. A database keeps the digest of each patient's
//! rows as it would write them, changed row by row as rows change, so
//! read-repair can tell that a file holds exactly its rows without reading
//! them from the state.
//!
//! A sum (four 64-bit lanes, each modulo 2^64), not a hash of the whole
//! file: it is kept up to date by taking out a row's old hash and adding its
//! new one. Unlike an exclusive or, a row that appears twice does not
//! cancel itself out.

use sha2::{Digest as _, Sha256};

use super::patient::{RowSource, push_header, push_row};
use super::trailer;

/// The sum of the rows' hashes; the empty patient's is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RowsDigest([u64; 4]);

impl RowsDigest {
    /// The hash of one row element's bytes.
    fn of_row(bytes: &[u8]) -> RowsDigest {
        let hash = Sha256::digest(bytes);
        let mut lanes = [0u64; 4];
        for (lane, chunk) in lanes.iter_mut().zip(hash.chunks_exact(8)) {
            *lane = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        }
        RowsDigest(lanes)
    }

    /// The hash of one row as a patient file holds it.
    pub(crate) fn row(table: &str, pk: &str, row: &impl RowSource) -> RowsDigest {
        let mut out = String::with_capacity(512);
        push_row(&mut out, None, table, pk, row);
        RowsDigest::of_row(out.as_bytes())
    }

    pub(crate) fn plus(self, other: RowsDigest) -> RowsDigest {
        RowsDigest(std::array::from_fn(|i| self.0[i].wrapping_add(other.0[i])))
    }

    pub(crate) fn minus(self, other: RowsDigest) -> RowsDigest {
        RowsDigest(std::array::from_fn(|i| self.0[i].wrapping_sub(other.0[i])))
    }

    /// Its 32 stored bytes.
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, lane) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&lane.to_le_bytes());
        }
        out
    }

    /// From its stored bytes; `None` unless exactly 32.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<RowsDigest> {
        let bytes: &[u8; 32] = bytes.try_into().ok()?;
        Some(RowsDigest(std::array::from_fn(|i| {
            u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("eight bytes"))
        })))
    }

    /// The digest of a whole patient file of `patient`, or `None` unless
    /// the file is sealed (its trailer checks), opens with exactly the
    /// header this build writes for that patient and holds nothing but
    /// `<row>` elements before its closing tag. A file this build wrote
    /// always qualifies; anything else is compared the slow way, so a file
    /// this function misjudges is only slower, never taken as up to date.
    pub(crate) fn of_file(file: &[u8], patient: &str) -> Option<RowsDigest> {
        const ROW: &[u8] = b"  <row ";
        const END: &[u8] = b"</patient-file>\n";
        let body = trailer::unseal(file).ok()?;
        let mut header = String::with_capacity(128);
        push_header(&mut header, patient);
        let rows = body.strip_prefix(header.as_bytes())?.strip_suffix(END)?;
        if rows.is_empty() {
            return Some(RowsDigest::default());
        }
        if !rows.starts_with(ROW) || !rows.ends_with(b"\n") {
            return None;
        }
        // A row ends where the next begins: text and attributes escape
        // every `<`, so "\n  <row " only ever starts an element.
        let mut sum = RowsDigest::default();
        let mut start = 0;
        for at in memchr::memmem::find_iter(rows, b"\n  <row ") {
            sum = sum.plus(RowsDigest::of_row(&rows[start..=at]));
            start = at + 1;
        }
        Some(sum.plus(RowsDigest::of_row(&rows[start..])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        FieldState, FieldVersion, Hlc, PatientDoc, PatientId, RowKey, RowState, SiteId, Value,
    };
    use crate::xmlstore::encode_patient;

    fn row(value: &str, cl: u64) -> RowState {
        let hlc = Hlc::new(1_700_000_000_000, 3, SiteId::from_bytes([7; 16]));
        let mut row = RowState { cl, ..RowState::default() };
        let v = FieldVersion::new(Value::Text(value.into()), hlc, Default::default()).unwrap();
        row.fields.insert("name".into(), FieldState::single(v));
        row
    }

    fn doc(rows: &[(&str, &str, RowState)]) -> PatientDoc {
        let mut doc = PatientDoc::new(PatientId("p1".into()));
        for (t, pk, r) in rows {
            doc.rows.insert(RowKey { table: (*t).into(), pk: (*pk).into() }, r.clone());
        }
        doc
    }

    #[test]
    fn a_files_digest_is_the_sum_of_its_rows() {
        let rows = [
            ("patients", "p1", row("Ada <&> \"x\"\n  <row ", 1)),
            ("notes", "n1", row("first", 1)),
            ("notes", "n2", RowState { cl: 2, ..RowState::default() }),
        ];
        let file = encode_patient(&doc(&rows));
        let sum = rows.iter().fold(RowsDigest::default(), |s, (t, pk, r)| s.plus(RowsDigest::row(t, pk, r)));
        assert_eq!(RowsDigest::of_file(&file, "p1"), Some(sum));
        assert_eq!(RowsDigest::of_file(&encode_patient(&doc(&[])), "p1"), Some(RowsDigest::default()));
        // Taking a row out and putting another in is what a save does.
        let changed = row("second", 1);
        let after = sum
            .minus(RowsDigest::row("notes", "n1", &rows[1].2))
            .plus(RowsDigest::row("notes", "n1", &changed));
        let file2 = encode_patient(&doc(&[rows[0].clone(), ("notes", "n1", changed), rows[2].clone()]));
        assert_eq!(RowsDigest::of_file(&file2, "p1"), Some(after));
        assert_ne!(after, sum);
        assert_eq!(RowsDigest::from_bytes(&sum.to_bytes()), Some(sum));
        assert_eq!(RowsDigest::from_bytes(&[0; 31]), None);
    }

    #[test]
    fn a_file_that_is_not_exactly_as_written_has_no_digest() {
        let rows = [("patients", "p1", row("Ada", 1)), ("notes", "n1", row("first", 1))];
        let file = encode_patient(&doc(&rows));
        assert_eq!(RowsDigest::of_file(&file, "p2"), None, "another patient's header");
        // (The trailer's own closing newline is optional, as for every reader.)
        for cut in 0..file.len() - 1 {
            assert_eq!(RowsDigest::of_file(&file[..cut], "p1"), None, "cut at {cut}");
        }
        let mut damaged = file.clone();
        let i = damaged.iter().position(|b| *b == b'A').unwrap();
        damaged[i] = b'B';
        assert_eq!(RowsDigest::of_file(&damaged, "p1"), None, "a changed byte fails the trailer");
        // Something between the rows, sealed again: not the same digest.
        let body = crate::xmlstore::unseal(&file).unwrap();
        let text =
            std::str::from_utf8(body).unwrap().replace("  </row>\n  <row ", "  </row>\n<!-- x -->\n  <row ");
        let sealed = crate::xmlstore::seal(text.into_bytes());
        assert_ne!(RowsDigest::of_file(&sealed, "p1"), RowsDigest::of_file(&file, "p1"));
    }
}
