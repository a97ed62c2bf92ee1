//! Versions, rows and patient documents, and the join that merges them.
//!
//! Every join here is commutative, associative and idempotent (property tests
//! in `tests/it/model_laws.rs` check it). A field keeps the set of its
//! *maximal* versions: those no other known version supersedes. One version
//! is the normal case; several means concurrent edits, the highest stamp is
//! the value the database shows, and the others are conflict records that
//! travel with the data until a later edit supersedes them all.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use super::hlc::Hlc;
use super::ids::PatientId;
use super::value::Value;

/// What the writer of a version had seen of its field: for each site that
/// wrote the field, the latest of that site's versions it had in hand
/// (directly, or through a version that had). A version supersedes exactly
/// the versions its base covers, so two edits made without seeing each
/// other stay concurrent whatever their clocks say.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Base {
    /// Sorted by site; at most one stamp per site.
    stamps: Vec<Hlc>,
}

/// Appends the text form of a list of stamps: separated by spaces.
pub fn push_stamps(out: &mut String, stamps: &[Hlc]) {
    for (i, h) in stamps.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        h.push_encoded(out);
    }
}

impl Base {
    /// The base made of these stamps: the latest one of each site.
    pub fn new(stamps: impl IntoIterator<Item = Hlc>) -> Base {
        let mut base = Base::default();
        for h in stamps {
            base.add(h);
        }
        base
    }

    /// Records that `h` (and so every earlier version of its site) was seen.
    pub fn add(&mut self, h: Hlc) {
        match self.stamps.binary_search_by(|s| s.site().cmp(&h.site())) {
            Ok(i) => self.stamps[i] = self.stamps[i].max(h),
            Err(i) => self.stamps.insert(i, h),
        }
    }

    /// True when a writer with this base had seen the version stamped `h`.
    pub fn covers(&self, h: Hlc) -> bool {
        match self.stamps.binary_search_by(|s| s.site().cmp(&h.site())) {
            Ok(i) => self.stamps[i] >= h,
            Err(_) => false,
        }
    }

    pub fn stamps(&self) -> &[Hlc] {
        &self.stamps
    }

    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    /// The text form: the stamps separated by spaces.
    pub fn push_encoded(&self, out: &mut String) {
        push_stamps(out, &self.stamps);
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.stamps.len() * 49);
        self.push_encoded(&mut out);
        out
    }

    /// Parses the text form; `None` when a stamp is malformed, a site
    /// appears twice, or there are more than `max` stamps.
    pub fn parse(text: &str, max: usize) -> Option<Base> {
        let mut base = Base::default();
        for (i, part) in text.split(' ').enumerate() {
            if i >= max {
                return None;
            }
            let h = Hlc::parse(part).ok()?;
            if base.stamps.iter().any(|s| s.site() == h.site()) {
                return None;
            }
            base.add(h);
        }
        Some(base)
    }

    /// Adds every stamp of `other`; returns whether anything changed.
    pub fn merge(&mut self, other: &Base) -> bool {
        let before = self.stamps.len();
        let mut changed = false;
        for h in &other.stamps {
            match self.stamps.binary_search_by(|s| s.site().cmp(&h.site())) {
                Ok(i) if self.stamps[i] < *h => {
                    self.stamps[i] = *h;
                    changed = true;
                }
                Ok(_) => {}
                Err(i) => self.stamps.insert(i, *h),
            }
        }
        changed || self.stamps.len() != before
    }

    /// The latest stamp seen, from any site.
    pub fn latest(&self) -> Option<Hlc> {
        self.stamps.iter().copied().max()
    }
}

/// One written value of one field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldVersion {
    // Field order matters for the derived Ord: stamp first.
    hlc: Hlc,
    base: Base,
    value: Value,
}

/// A version whose base is not strictly before its own stamp (only a damaged
/// or hostile file can hold one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version stamped {hlc} claims a base {base} that is not before it")]
pub struct InvalidVersion {
    hlc: Hlc,
    base: Hlc,
}

impl FieldVersion {
    /// `base` is what the writer had seen of the field; every stamp in it
    /// must be strictly before `hlc` (a clock always moves past what it saw).
    pub fn new(value: Value, hlc: Hlc, base: Base) -> Result<FieldVersion, InvalidVersion> {
        match base.stamps.iter().find(|b| **b >= hlc) {
            Some(b) => Err(InvalidVersion { hlc, base: *b }),
            None => Ok(FieldVersion { hlc, base, value }),
        }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn hlc(&self) -> Hlc {
        self.hlc
    }

    pub fn base(&self) -> &Base {
        &self.base
    }

    /// True when this version was written by someone who had `other` (or a
    /// later version of its site) in hand.
    pub fn supersedes(&self, other: &FieldVersion) -> bool {
        self.base.covers(other.hlc)
    }

    /// True when neither version supersedes the other and they differ.
    pub fn is_concurrent_with(&self, other: &FieldVersion) -> bool {
        self != other && !self.supersedes(other) && !other.supersedes(self)
    }
}

/// The maximal versions of one field; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldState {
    /// Sorted ascending; the last one is the winner.
    versions: Vec<FieldVersion>,
}

impl FieldState {
    pub fn single(version: FieldVersion) -> FieldState {
        FieldState { versions: vec![version] }
    }

    /// Builds the state of a set of versions: keeps the maximal ones.
    /// Returns `None` for an empty input.
    pub fn from_versions(mut all: Vec<FieldVersion>) -> Option<FieldState> {
        if all.is_empty() {
            return None;
        }
        all.sort();
        all.dedup();
        // Most fields hold one version: nothing to sort out, nothing to copy
        // (but no spare capacity kept either: a patient holds many fields).
        if all.len() == 1 {
            all.shrink_to_fit();
            return Some(FieldState { versions: all });
        }
        let keep: Vec<bool> = all.iter().map(|v| !all.iter().any(|w| w.supersedes(v))).collect();
        let mut maximal: Vec<FieldVersion> =
            all.into_iter().zip(keep).filter_map(|(v, keep)| keep.then_some(v)).collect();
        // Cannot be empty: the version with the highest stamp is superseded
        // by nothing, because superseding it needs a base at or past its
        // stamp and so a stamp beyond it.
        debug_assert!(!maximal.is_empty());
        maximal.shrink_to_fit();
        Some(FieldState { versions: maximal })
    }

    /// The version the database shows: the highest stamp.
    pub fn winner(&self) -> &FieldVersion {
        self.versions.last().expect("a FieldState is never empty")
    }

    /// Concurrent versions that lost to the winner (conflict records).
    pub fn losers(&self) -> &[FieldVersion] {
        &self.versions[..self.versions.len() - 1]
    }

    pub fn versions(&self) -> &[FieldVersion] {
        &self.versions
    }

    /// The highest stamp in this field.
    pub fn max_hlc(&self) -> Hlc {
        self.winner().hlc
    }

    /// Everything this state has seen: the base a new edit made with it in
    /// hand carries, so that edit supersedes every version here.
    pub fn context(&self) -> Base {
        let mut out = Base::default();
        for v in &self.versions {
            out.add(v.hlc);
            out.merge(&v.base);
        }
        out
    }

    pub fn join(&self, other: &FieldState) -> FieldState {
        if self == other {
            return self.clone();
        }
        let mut all = self.versions.clone();
        all.extend(other.versions.iter().cloned());
        FieldState::from_versions(all).expect("joining two non-empty states")
    }
}

/// Identifies one row of one mapped table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    pub table: String,
    pub pk: String,
}

/// One row: its causal length (odd = alive, even = deleted), its fields,
/// and for a deleted row what the delete saw.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RowState {
    pub cl: u64,
    pub fields: BTreeMap<String, FieldState>,
    /// For a tombstone: every stamp of the row the deleting site had seen,
    /// the delete's own stamp included (merged when several sites deleted
    /// it at the same causal length). A field version it does not cover is
    /// an edit made concurrently with the delete: the row stays deleted and
    /// the edit becomes a record for a person to see. Empty while alive, and
    /// in tombstones written before it existed.
    pub deleted: Base,
}

impl RowState {
    /// The largest causal length a file may carry. A row's causal length
    /// grows by one per delete or re-insert, so real rows stay far below;
    /// refusing more at the boundary keeps local increments from ever
    /// overflowing.
    pub const MAX_CL: u64 = 1 << 48;

    pub fn is_alive(&self) -> bool {
        RowState::cl_is_alive(self.cl)
    }

    /// Whether a row of this causal length exists: odd lengths live.
    pub fn cl_is_alive(cl: u64) -> bool {
        cl % 2 == 1
    }

    /// The value the database shows for a column, if the row has it.
    pub fn value(&self, column: &str) -> Option<&Value> {
        self.fields.get(column).map(|f| f.winner().value())
    }

    /// A field where `other` holds a version under a stamp that this row
    /// holds with another value or base, and that stamp. No clinicsync
    /// writes two versions under one stamp (one edit, one stamp), so one
    /// of the two copies was damaged or forged; joining them would keep
    /// both as a concurrent edit made out of nothing.
    pub fn clash_with<'a>(&self, other: &'a RowState) -> Option<(&'a str, Hlc)> {
        other.fields.iter().find_map(|(column, theirs)| {
            let mine = self.fields.get(column)?;
            theirs
                .versions()
                .iter()
                .find(|v| mine.versions().iter().any(|w| w.hlc == v.hlc && w != *v))
                .map(|v| (column.as_str(), v.hlc))
        })
    }

    /// Merges `other` into `self`; returns true when `self` changed.
    pub fn join_from(&mut self, other: &RowState) -> bool {
        let mut changed = false;
        if other.cl > self.cl {
            self.cl = other.cl;
            self.deleted = other.deleted.clone();
            changed = true;
        } else if other.cl == self.cl {
            changed |= self.deleted.merge(&other.deleted);
        }
        for (column, theirs) in &other.fields {
            match self.fields.entry(column.clone()) {
                Entry::Vacant(slot) => {
                    slot.insert(theirs.clone());
                    changed = true;
                }
                Entry::Occupied(mut slot) => {
                    if slot.get() != theirs {
                        let joined = slot.get().join(theirs);
                        if &joined != slot.get() {
                            slot.insert(joined);
                            changed = true;
                        }
                    }
                }
            }
        }
        changed
    }

    pub fn join(&self, other: &RowState) -> RowState {
        let mut out = self.clone();
        out.join_from(other);
        out
    }

    /// The highest stamp anywhere in the row.
    pub fn max_hlc(&self) -> Option<Hlc> {
        self.fields.values().map(FieldState::max_hlc).max().max(self.deleted.latest())
    }

    /// Everything the row holds: what a site that deletes it has seen.
    pub fn context(&self) -> Base {
        let mut out = self.deleted.clone();
        for state in self.fields.values() {
            out.merge(&state.context());
        }
        out
    }

    /// For a tombstone that says what it saw: the field versions written
    /// without the delete in view (edits that lost to it).
    pub fn lost_to_delete(&self) -> impl Iterator<Item = (&String, &FieldVersion)> {
        let judged = !self.is_alive() && !self.deleted.is_empty();
        self.fields
            .iter()
            .filter(move |_| judged)
            .flat_map(|(c, s)| s.versions().iter().map(move |v| (c, v)))
            .filter(|(_, v)| !self.deleted.covers(v.hlc))
    }

    /// When the row was deleted (the delete's stamp), for a tombstone that
    /// says.
    pub fn deleted_at(&self) -> Option<Hlc> {
        if self.is_alive() { None } else { self.deleted.latest() }
    }
}

/// All rows of one patient: the root row and every child row pointing at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatientDoc {
    pub patient: PatientId,
    pub rows: BTreeMap<RowKey, RowState>,
}

impl PatientDoc {
    pub fn new(patient: PatientId) -> PatientDoc {
        PatientDoc { patient, rows: BTreeMap::new() }
    }

    /// Merges `other`'s rows into `self`; both must describe the same patient.
    pub fn join_from(&mut self, other: &PatientDoc) -> bool {
        debug_assert_eq!(self.patient, other.patient);
        let mut changed = false;
        for (key, theirs) in &other.rows {
            match self.rows.entry(key.clone()) {
                Entry::Vacant(slot) => {
                    slot.insert(theirs.clone());
                    changed = true;
                }
                Entry::Occupied(mut slot) => changed |= slot.get_mut().join_from(theirs),
            }
        }
        changed
    }

    pub fn join(&self, other: &PatientDoc) -> PatientDoc {
        let mut out = self.clone();
        out.join_from(other);
        out
    }

    /// Whether `self` already holds everything `other` holds: the join
    /// would equal `self`. Joins one row at a time, so a large patient is
    /// never copied whole.
    pub fn covers(&self, other: &PatientDoc) -> bool {
        self.covers_but(other, |_, _| false)
    }

    /// Whether `self` holds everything `other` holds, leaving out the rows
    /// of `other` that `self` lacks altogether and `gone` accepts (such as
    /// tombstones another site has purged: a file lacking one is not behind).
    pub fn covers_but(&self, other: &PatientDoc, gone: impl Fn(&RowKey, &RowState) -> bool) -> bool {
        other.rows.iter().all(|(key, theirs)| match self.rows.get(key) {
            Some(mine) => {
                let mut joined = mine.clone();
                joined.join_from(theirs);
                joined == *mine
            }
            None => gone(key, theirs),
        })
    }

    /// Every stamp in the document, for advancing a clock or checking skew.
    pub fn stamps(&self) -> impl Iterator<Item = Hlc> + '_ {
        self.rows
            .values()
            .flat_map(|r| r.fields.values())
            .flat_map(|f| f.versions().iter().map(FieldVersion::hlc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SiteId;

    fn hlc(wall: u64, site: u8) -> Hlc {
        Hlc::new(wall, 0, SiteId::from_bytes([site; 16]))
    }

    fn v(text: &str, at: Hlc, seen: &[Hlc]) -> FieldVersion {
        FieldVersion::new(Value::Text(text.into()), at, Base::new(seen.iter().copied())).unwrap()
    }

    #[test]
    fn a_later_edit_supersedes_and_replaces() {
        let first = v("a", hlc(1, 1), &[]);
        let second = v("b", hlc(2, 2), &[first.hlc()]);
        let joined = FieldState::single(first).join(&FieldState::single(second.clone()));
        assert_eq!(joined.versions(), &[second]);
    }

    #[test]
    fn another_version_under_a_known_stamp_is_a_clash_and_the_same_version_is_not() {
        let row = |fields: &[(&str, FieldVersion)]| RowState {
            cl: 1,
            fields: fields.iter().map(|(c, v)| (c.to_string(), FieldState::single(v.clone()))).collect(),
            deleted: Base::default(),
        };
        let stamp = hlc(5, 1);
        let mine =
            row(&[("phone", v("+1 555 0142", stamp, &[])), ("email", v("a@example.org", hlc(4, 1), &[]))]);
        let same = row(&[("phone", v("+1 555 0142", stamp, &[]))]);
        let later = row(&[("phone", v("+1 555 0199", hlc(6, 2), &[stamp]))]);
        let other_value = row(&[("phone", v("+1 555 0143", stamp, &[]))]);
        let other_base = row(&[("phone", v("+1 555 0142", stamp, &[hlc(3, 2)]))]);
        assert_eq!(mine.clash_with(&same), None);
        assert_eq!(mine.clash_with(&later), None);
        assert_eq!(mine.clash_with(&other_value), Some(("phone", stamp)));
        assert_eq!(mine.clash_with(&other_base), Some(("phone", stamp)));
        // Joined, the clash would be a concurrent edit made out of nothing.
        assert_eq!(mine.join(&other_value).fields["phone"].versions().len(), 2);
    }

    #[test]
    fn concurrent_edits_keep_both_and_the_higher_stamp_wins() {
        let base = hlc(1, 1);
        let a = v("phone A", hlc(5, 1), &[base]);
        let b = v("phone B", hlc(6, 2), &[base]);
        assert!(a.is_concurrent_with(&b));
        let joined = FieldState::single(a.clone()).join(&FieldState::single(b.clone()));
        assert_eq!(joined.winner(), &b);
        assert_eq!(joined.losers(), std::slice::from_ref(&a));
        // A later edit made with both in hand settles both.
        let c = v("phone C", hlc(7, 1), joined.context().stamps());
        let settled = joined.join(&FieldState::single(c.clone()));
        assert_eq!(settled.versions(), &[c]);
    }

    #[test]
    fn an_edit_that_never_saw_a_version_does_not_supersede_it_whatever_the_clocks_say() {
        // Site 1 writes at t=5; site 3 writes at t=9 and t=12 without
        // seeing it. Site 3's second edit saw only its first.
        let one = v("from site 1", hlc(5, 1), &[]);
        let three = v("from site 3", hlc(9, 3), &[]);
        let three_again = v("site 3 again", hlc(12, 3), &[three.hlc()]);
        let state = FieldState::single(one.clone())
            .join(&FieldState::single(three))
            .join(&FieldState::single(three_again.clone()));
        assert_eq!(state.versions(), &[one, three_again]);
    }

    #[test]
    fn a_base_at_or_after_the_stamp_is_refused() {
        let base = |h| Base::new([h]);
        assert!(FieldVersion::new(Value::Null, hlc(5, 1), base(hlc(5, 1))).is_err());
        assert!(FieldVersion::new(Value::Null, hlc(5, 1), base(hlc(6, 2))).is_err());
    }

    #[test]
    fn a_row_left_out_of_covering_counts_only_when_the_other_lacks_it_altogether() {
        let key = |pk: &str| RowKey { table: "appointments".into(), pk: pk.into() };
        let mut ours = PatientDoc::new(PatientId("p".into()));
        ours.rows.insert(key("x"), RowState { cl: 2, ..RowState::default() });
        let file = PatientDoc::new(PatientId("p".into()));
        assert!(!file.covers(&ours));
        assert!(file.covers_but(&ours, |k, _| *k == key("x")));
        assert!(!file.covers_but(&ours, |k, _| *k == key("y")));
        // A file still showing the row is behind, whatever `gone` says.
        let mut alive = file.clone();
        alive.rows.insert(key("x"), RowState { cl: 1, ..RowState::default() });
        assert!(!alive.covers_but(&ours, |_, _| true));
    }

    #[test]
    fn higher_causal_length_wins_existence() {
        let alive = RowState { cl: 1, ..RowState::default() };
        let deleted = RowState { cl: 2, ..RowState::default() };
        assert!(!alive.join(&deleted).is_alive());
        let reinserted = RowState { cl: 3, ..RowState::default() };
        assert!(deleted.join(&reinserted).is_alive());
    }
}
