//! The change-log segment, format version 1: the versions and tombstones
//! one export stamped, written once by their site to
//! `log/<site>/<seq:010>.xml` and never changed. Rows are the same `<row>`
//! elements as in patient files, with the patient each belongs to.

use std::collections::BTreeMap;

use super::error::{DecodeError, DecodeErrorKind};
use super::meta::{format_time, parse_time};
use super::patient::{push_row, read_row, row_header_from};
use super::reader::{Item, Limits, Root, XmlReader, element_name, is_named, open_root, required};
use super::trailer;
use crate::model::{RowKey, RowState, SiteId};

/// One export of one site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub site: SiteId,
    pub seq: u64,
    /// When the export was stamped, milliseconds since the epoch.
    pub created_ms: u64,
    /// (patient, row key) -> the stamped versions of that row.
    pub rows: BTreeMap<(String, RowKey), RowState>,
}

pub fn encode_segment(s: &Segment) -> Vec<u8> {
    let mut out = String::with_capacity(256 + s.rows.len() * 512);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<segment format=\"1\" site=\"{}\" seq=\"{}\" created=\"{}\">\n",
        s.site,
        s.seq,
        format_time(s.created_ms)
    ));
    for ((patient, key), row) in &s.rows {
        push_row(&mut out, Some(patient), &key.table, &key.pk, row);
    }
    out.push_str("</segment>\n");
    trailer::seal(out.into_bytes())
}

/// Reads a segment: trailer first, then the XML with limits. Nothing of a
/// segment that fails is returned.
pub fn decode_segment(file: &[u8], limits: Limits) -> Result<Segment, DecodeError> {
    let Root { reader: mut r, attrs, empty } = open_root(file, limits, "segment", 1)?;
    let bad = |r: &XmlReader<'_>, attribute: &'static str, value: &str, reason: &str| {
        r.error(DecodeErrorKind::BadAttribute {
            attribute,
            value: value.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let site_text = required(&r, &attrs, "segment", "site")?;
    let site = SiteId::parse(site_text).map_err(|e| bad(&r, "site", site_text, &e.to_string()))?;
    let seq_text = required(&r, &attrs, "segment", "seq")?;
    let seq = seq_text.parse().map_err(|_| bad(&r, "seq", seq_text, "not a whole number"))?;
    let created_text = required(&r, &attrs, "segment", "created")?;
    let created_ms =
        parse_time(created_text).ok_or_else(|| bad(&r, "created", created_text, "not an RFC 3339 time"))?;
    let mut rows = BTreeMap::new();
    if !empty {
        loop {
            let (e, is_empty) = match r.next_structural()? {
                Item::End => break,
                Item::Start(e) => (e, false),
                Item::Empty(e) => (e, true),
                Item::Text(_) | Item::Eof => {
                    return Err(r.error(DecodeErrorKind::Unexpected("the end of the file inside <segment>")));
                }
            };
            if !is_named(&e, "row") {
                return Err(
                    r.error(DecodeErrorKind::WrongElement { expected: "row", found: element_name(&e) })
                );
            }
            let attrs = r.attributes(&e)?;
            let patient = required(&r, &attrs, "row", "patient")?.to_owned();
            super::patient::check_key(&r, "patient", &patient)?;
            let header = row_header_from(&r, &attrs)?;
            let mut row = if is_empty {
                RowState { cl: header.cl, ..RowState::default() }
            } else {
                read_row(&mut r, header.cl, header.default)?
            };
            row.deleted = header.deleted;
            let slot = (patient, header.key);
            if rows.len() >= r.limits().max_rows {
                return Err(r.error(DecodeErrorKind::TooManyRows { limit: r.limits().max_rows }));
            }
            if rows.contains_key(&slot) {
                let (_, key) = slot;
                return Err(r.error(DecodeErrorKind::DuplicateRow { table: key.table, pk: key.pk }));
            }
            rows.insert(slot, row);
        }
    }
    r.expect_eof()?;
    Ok(Segment { site, seq, created_ms, rows })
}
