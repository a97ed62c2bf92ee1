//! The patient file, format version 1: one canonical XML document per
//! patient holding every row of that patient with every version of every
//! field. The same state always gives the same bytes, so a site rewrites a
//! file only when it knows something the file does not.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::error::{DecodeError, DecodeErrorKind};
use super::reader::{
    Attrs, Item, Limits, Root, XmlReader, element_name, is_named, open_root, optional, required,
};
use super::text::{is_xml_safe, push_attr, push_content};
use super::trailer;
use crate::model::{
    Base, FieldState, FieldVersion, Hlc, PatientDoc, PatientId, RowKey, RowState, Value, push_stamps,
};

/// The patient file format this build writes and reads.
pub const PATIENT_FORMAT: u32 = 1;

/// Encodes a document into its canonical bytes, trailer included.
pub fn encode_patient(doc: &PatientDoc) -> Vec<u8> {
    let mut writer = PatientWriter::new(&doc.patient.0, doc.rows.len());
    for (key, row) in &doc.rows {
        writer.row(&key.table, &key.pk, row);
    }
    writer.finish()
}

/// Writes a patient file a row at a time, from any [`RowSource`]: a decoded
/// document, or (for the file stage and read-repair) the state's stored
/// rows read in place. Rows must come in key order.
pub(crate) struct PatientWriter {
    out: String,
}

impl PatientWriter {
    pub(crate) fn new(patient: &str, rows: usize) -> PatientWriter {
        let mut out = String::with_capacity(256 + rows * 512);
        push_header(&mut out, patient);
        PatientWriter { out }
    }

    pub(crate) fn row(&mut self, table: &str, pk: &str, row: &impl RowSource) {
        push_row(&mut self.out, None, table, pk, row);
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out.push_str("</patient-file>\n");
        trailer::seal(self.out.into_bytes())
    }
}

/// Everything a patient file holds before its first row.
pub(super) fn push_header(out: &mut String, patient: &str) {
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<patient-file format=\"1\" patient=\"");
    push_attr(out, patient);
    out.push_str("\">\n");
}

/// A value as the writer reads it, borrowed from where it is kept.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    /// An owned copy.
    pub(crate) fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(t.to_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(value: &'a Value) -> ValueRef<'a> {
        match value {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// A field version as the writer reads it: its stamp, its base's stamps
/// (sorted by site, as in [`Base`]) and its value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VersionRef<'a> {
    pub(crate) hlc: Hlc,
    pub(crate) base: &'a [Hlc],
    pub(crate) value: ValueRef<'a>,
}

/// What a `<row>` element is written from.
pub(crate) trait RowSource {
    fn cl(&self) -> u64;
    /// The stamps of what its delete saw (empty if none).
    fn deleted(&self) -> &[Hlc];
    /// Every version of every field with its column: columns in name
    /// order, each column's versions in [`FieldState`] order.
    fn versions(&self) -> impl Iterator<Item = (&str, VersionRef<'_>)>;
}

impl RowSource for RowState {
    fn cl(&self) -> u64 {
        self.cl
    }

    fn deleted(&self) -> &[Hlc] {
        self.deleted.stamps()
    }

    fn versions(&self) -> impl Iterator<Item = (&str, VersionRef<'_>)> {
        self.fields.iter().flat_map(|(column, state)| {
            state.versions().iter().map(move |v| {
                (
                    column.as_str(),
                    VersionRef { hlc: v.hlc(), base: v.base().stamps(), value: v.value().into() },
                )
            })
        })
    }
}

/// The stamp pair most fields of a row share (they were written together):
/// written once on `<row>` and omitted from those fields. Ties go to the
/// smallest pair, so the choice, like the bytes, depends only on the state.
fn row_default(row: &impl RowSource) -> Option<(Hlc, &[Hlc])> {
    // Most rows: every field was written together.
    let mut versions = row.versions().map(|(_, v)| (v.hlc, v.base));
    let first = versions.next()?;
    if versions.all(|pair| pair == first) {
        return Some(first);
    }
    let mut counts: BTreeMap<(Hlc, &[Hlc]), usize> = BTreeMap::new();
    for (_, v) in row.versions() {
        *counts.entry((v.hlc, v.base)).or_default() += 1;
    }
    let best = counts.values().copied().max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(pair, _)| pair)
}

/// Writes one `<row>` element with its fields; `patient` only in segments.
pub(crate) fn push_row(out: &mut String, patient: Option<&str>, table: &str, pk: &str, row: &impl RowSource) {
    out.push_str("  <row ");
    if let Some(p) = patient {
        out.push_str("patient=\"");
        push_attr(out, p);
        out.push_str("\" ");
    }
    out.push_str("table=\"");
    push_attr(out, table);
    out.push_str("\" pk=\"");
    push_attr(out, pk);
    out.push_str("\" cl=\"");
    push_int(out, row.cl());
    if !RowState::cl_is_alive(row.cl()) && !row.deleted().is_empty() {
        out.push_str("\" d=\"");
        push_stamps(out, row.deleted());
    }
    let default = row_default(row);
    if let Some((h, b)) = default {
        out.push_str("\" h=\"");
        h.push_encoded(out);
        if !b.is_empty() {
            out.push_str("\" b=\"");
            push_stamps(out, b);
        }
    }
    let mut versions = row.versions().peekable();
    if versions.peek().is_none() {
        out.push_str("\"/>\n");
        return;
    }
    out.push_str("\">\n");
    for (column, version) in versions {
        push_field(out, column, version, default);
    }
    out.push_str("  </row>\n");
}

fn push_field(out: &mut String, column: &str, version: VersionRef<'_>, default: Option<(Hlc, &[Hlc])>) {
    out.push_str("    <f c=\"");
    push_attr(out, column);
    if default != Some((version.hlc, version.base)) {
        out.push_str("\" h=\"");
        version.hlc.push_encoded(out);
        if !version.base.is_empty() {
            out.push_str("\" b=\"");
            push_stamps(out, version.base);
        }
    }
    let close = |out: &mut String, content: &str| {
        out.push_str("\">");
        out.push_str(content);
        out.push_str("</f>\n");
    };
    match version.value {
        ValueRef::Null => out.push_str("\" t=\"null\"/>\n"),
        ValueRef::Integer(i) => {
            out.push_str("\" t=\"int\">");
            push_int(out, i);
            out.push_str("</f>\n");
        }
        ValueRef::Real(r) => {
            out.push_str("\" t=\"real");
            close(out, &encode_real(r));
        }
        ValueRef::Text(t) if is_xml_safe(t) => {
            out.push_str("\" t=\"text\">");
            push_content(out, t);
            out.push_str("</f>\n");
        }
        ValueRef::Text(t) => {
            out.push_str("\" t=\"text\" enc=\"base64");
            close(out, &B64.encode(t.as_bytes()));
        }
        ValueRef::Blob(b) => {
            out.push_str("\" t=\"blob");
            close(out, &B64.encode(b));
        }
    }
}

/// Appends a decimal integer without allocating.
fn push_int(out: &mut String, n: impl std::fmt::Display) {
    use std::fmt::Write as _;
    write!(out, "{n}").expect("writing to a String cannot fail");
}

/// Reals are written so that they read back bit for bit: the shortest
/// decimal that round-trips, `inf`/`-inf`, and `nan:` with the bits.
fn encode_real(r: f64) -> String {
    if r.is_nan() {
        format!("nan:{:016x}", r.to_bits())
    } else if r.is_infinite() {
        if r > 0.0 { "inf".into() } else { "-inf".into() }
    } else if r == 0.0 || (1e-6..1e15).contains(&r.abs()) {
        format!("{r}")
    } else {
        format!("{r:e}")
    }
}

fn decode_real(text: &str) -> Result<f64, String> {
    match text {
        "inf" => return Ok(f64::INFINITY),
        "-inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    if let Some(bits) = text.strip_prefix("nan:") {
        let bits = u64::from_str_radix(bits, 16).map_err(|e| e.to_string())?;
        let r = f64::from_bits(bits);
        return if r.is_nan() { Ok(r) } else { Err("nan: bits that are not a NaN".into()) };
    }
    if text.is_empty() || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')) {
        return Err(format!("{text:?} is not a number"));
    }
    text.parse::<f64>().map_err(|e| e.to_string())
}

/// Reads a patient file: checks the trailer, then parses the XML with the
/// given limits. Nothing of a file that fails is returned.
pub fn decode_patient(file: &[u8], limits: Limits) -> Result<PatientDoc, DecodeError> {
    let Root { reader: mut r, attrs, empty } = open_root(file, limits, "patient-file", PATIENT_FORMAT)?;
    let patient = required(&r, &attrs, "patient-file", "patient")?;
    check_key(&r, "patient", patient)?;
    let mut doc = PatientDoc::new(PatientId(patient.to_owned()));
    if !empty {
        loop {
            match r.next_structural()? {
                Item::End => break,
                Item::Start(e) | Item::Empty(e) if !is_named(&e, "row") => {
                    return Err(
                        r.error(DecodeErrorKind::WrongElement { expected: "row", found: element_name(&e) })
                    );
                }
                Item::Start(e) => {
                    let header = row_header(&r, &e)?;
                    let mut row = read_row(&mut r, header.cl, header.default)?;
                    row.deleted = header.deleted;
                    insert_row(&r, &mut doc, header.key, row)?;
                }
                Item::Empty(e) => {
                    let header = row_header(&r, &e)?;
                    let row = RowState { cl: header.cl, fields: BTreeMap::new(), deleted: header.deleted };
                    insert_row(&r, &mut doc, header.key, row)?;
                }
                Item::Text(_) | Item::Eof => {
                    return Err(
                        r.error(DecodeErrorKind::Unexpected("the end of the file inside <patient-file>"))
                    );
                }
            }
        }
    }
    r.expect_eof()?;
    Ok(doc)
}

fn insert_row(
    r: &XmlReader<'_>,
    doc: &mut PatientDoc,
    key: RowKey,
    row: RowState,
) -> Result<(), DecodeError> {
    if doc.rows.len() >= r.limits().max_rows {
        return Err(r.error(DecodeErrorKind::TooManyRows { limit: r.limits().max_rows }));
    }
    if doc.rows.contains_key(&key) {
        return Err(r.error(DecodeErrorKind::DuplicateRow { table: key.table, pk: key.pk }));
    }
    doc.rows.insert(key, row);
    Ok(())
}

fn row_header(r: &XmlReader<'_>, e: &quick_xml::events::BytesStart<'_>) -> Result<RowHeader, DecodeError> {
    let attrs = r.attributes(e)?;
    row_header_from(r, &attrs)
}

/// What a `<row>` start tag says: the row, its causal length, and the stamp
/// pair its fields default to.
pub(crate) struct RowHeader {
    pub(crate) key: RowKey,
    pub(crate) cl: u64,
    pub(crate) default: Option<(Hlc, Base)>,
    /// What the delete saw (`d`), for a tombstone.
    pub(crate) deleted: Base,
}

/// Refuses a key (a row's or a patient's) with control characters: it
/// names files and is shown to people.
pub(crate) fn check_key(r: &XmlReader<'_>, attribute: &'static str, key: &str) -> Result<(), DecodeError> {
    if is_xml_safe(key) {
        return Ok(());
    }
    Err(r.error(DecodeErrorKind::BadAttribute {
        attribute,
        value: key.to_owned(),
        reason: "a key with control characters, which clinicsync never exports".into(),
    }))
}

/// Reads the key and causal length of a `<row>` from its attributes.
pub(crate) fn row_header_from(r: &XmlReader<'_>, attrs: &Attrs<'_>) -> Result<RowHeader, DecodeError> {
    let table = required(r, attrs, "row", "table")?.to_owned();
    let pk = required(r, attrs, "row", "pk")?.to_owned();
    check_key(r, "pk", &pk)?;
    let cl_text = required(r, attrs, "row", "cl")?;
    let cl = cl_text.parse::<u64>().ok().filter(|cl| *cl <= RowState::MAX_CL).ok_or_else(|| {
        r.error(DecodeErrorKind::BadAttribute {
            attribute: "cl",
            value: cl_text.to_owned(),
            reason: format!("not a whole number from 0 to {}", RowState::MAX_CL),
        })
    })?;
    let h = optional(attrs, "h").map(|h| parse_hlc(r, "h", h)).transpose()?;
    let b = optional(attrs, "b").map(|b| parse_base(r, "b", b)).transpose()?;
    let default = match (h, b) {
        (Some(h), b) => Some((h, b.unwrap_or_default())),
        (None, None) => None,
        (None, Some(_)) => {
            return Err(r.error(DecodeErrorKind::MissingAttribute { element: "row", attribute: "h" }));
        }
    };
    let deleted = match optional(attrs, "d") {
        Some(d) if cl % 2 == 0 => parse_base(r, "d", d)?,
        Some(d) => {
            return Err(r.error(DecodeErrorKind::BadAttribute {
                attribute: "d",
                value: d.to_owned(),
                reason: format!("a row that exists (cl {cl}) cannot say what its delete saw"),
            }));
        }
        None => Base::default(),
    };
    Ok(RowHeader { key: RowKey { table, pk }, cl, default, deleted })
}

pub(crate) fn read_row(
    r: &mut XmlReader<'_>,
    cl: u64,
    default: Option<(Hlc, Base)>,
) -> Result<RowState, DecodeError> {
    let mut versions: BTreeMap<String, Vec<FieldVersion>> = BTreeMap::new();
    loop {
        let (e, empty) = match r.next_structural()? {
            Item::End => break,
            Item::Start(e) => (e, false),
            Item::Empty(e) => (e, true),
            Item::Text(_) | Item::Eof => {
                return Err(r.error(DecodeErrorKind::Unexpected("the end of the file inside <row>")));
            }
        };
        if !is_named(&e, "f") {
            return Err(r.error(DecodeErrorKind::WrongElement { expected: "f", found: element_name(&e) }));
        }
        let attrs = r.attributes(&e)?;
        let mut text = String::new();
        if !empty {
            loop {
                match r.next()? {
                    Item::Text(t) if text.is_empty() => text = t.into_owned(),
                    Item::Text(t) => text.push_str(&t),
                    Item::End => break,
                    _ => return Err(r.error(DecodeErrorKind::Unexpected("an element inside <f>"))),
                }
            }
        }
        let (column, version) = field(r, &attrs, text, default.as_ref())?;
        versions.entry(column).or_insert_with(|| Vec::with_capacity(1)).push(version);
    }
    let mut fields = BTreeMap::new();
    for (column, mut vs) in versions {
        // Concurrent versions of one field come from different sites (a
        // family has a handful); sorting them out is quadratic, so a file
        // with thousands is refused before that.
        if vs.len() > MAX_VERSIONS_PER_FIELD {
            return Err(r.error(DecodeErrorKind::BadField {
                reason: format!(
                    "has {} versions; clinicsync keeps at most {MAX_VERSIONS_PER_FIELD}",
                    vs.len()
                ),
                column,
            }));
        }
        vs.sort_by_key(|v| v.hlc());
        if let Some(pair) = vs.windows(2).find(|w| w[0].hlc() == w[1].hlc() && w[0] != w[1]) {
            return Err(r.error(DecodeErrorKind::BadField {
                reason: format!(
                    "holds two different versions under one stamp ({}), which no clinicsync writes",
                    pair[0].hlc().encode()
                ),
                column,
            }));
        }
        fields.insert(column, FieldState::from_versions(vs).expect("at least one version per entry"));
    }
    Ok(RowState { cl, fields, deleted: Base::default() })
}

fn field(
    r: &XmlReader<'_>,
    attrs: &Attrs<'_>,
    text: String,
    default: Option<&(Hlc, Base)>,
) -> Result<(String, FieldVersion), DecodeError> {
    let column = required(r, attrs, "f", "c")?.to_owned();
    // A field without `h` takes its stamp and base from its row.
    let (hlc, base) = match (optional(attrs, "h"), default) {
        (Some(h), _) => (
            parse_hlc(r, "h", h)?,
            optional(attrs, "b").map(|b| parse_base(r, "b", b)).transpose()?.unwrap_or_default(),
        ),
        (None, Some((h, b))) if optional(attrs, "b").is_none() => (*h, b.clone()),
        (None, _) => return Err(r.error(DecodeErrorKind::MissingAttribute { element: "f", attribute: "h" })),
    };
    let class = required(r, attrs, "f", "t")?;
    let encoding = optional(attrs, "enc");
    let bad = |class: &'static str, reason: String| r.error(DecodeErrorKind::BadValue { class, reason });
    let value = match (class, encoding) {
        ("null", None) if text.is_empty() => Value::Null,
        ("null", None) => return Err(bad("null", "a null field has content".into())),
        ("int", None) => {
            Value::Integer(text.parse().map_err(|_| bad("int", format!("{text:?} is not a 64-bit integer")))?)
        }
        ("real", None) => Value::Real(decode_real(&text).map_err(|e| bad("real", e))?),
        // Text with control characters is written as base64: in the open
        // (raw, or as a character reference) it was not written by
        // clinicsync, and could reach a terminal or a page.
        ("text", None) if !is_xml_safe(&text) => {
            return Err(bad(
                "text",
                "it holds control characters, which clinicsync writes only as base64".into(),
            ));
        }
        ("text", None) => Value::Text(text),
        ("text", Some("base64")) => {
            let bytes = B64.decode(text.trim()).map_err(|e| bad("text", e.to_string()))?;
            Value::Text(String::from_utf8(bytes).map_err(|_| bad("text", "base64 text is not UTF-8".into()))?)
        }
        ("blob", None) => Value::Blob(B64.decode(text.trim()).map_err(|e| bad("blob", e.to_string()))?),
        _ => {
            return Err(r.error(DecodeErrorKind::BadAttribute {
                attribute: "t",
                value: format!("{class} {}", encoding.unwrap_or("")).trim_end().to_owned(),
                reason: "unknown value type or encoding".into(),
            }));
        }
    };
    let shown = base.encode();
    let version = FieldVersion::new(value, hlc, base).map_err(|e| {
        r.error(DecodeErrorKind::BadAttribute { attribute: "b", value: shown, reason: e.to_string() })
    })?;
    Ok((column, version))
}

/// The most sites one base may name: far more than a family has.
const MAX_BASE_STAMPS: usize = 64;

/// Most concurrent versions one field may hold in a file (each is another
/// site's value that no edit has seen yet).
const MAX_VERSIONS_PER_FIELD: usize = 64;

fn parse_base(r: &XmlReader<'_>, attribute: &'static str, text: &str) -> Result<Base, DecodeError> {
    Base::parse(text, MAX_BASE_STAMPS).ok_or_else(|| {
        r.error(DecodeErrorKind::BadAttribute {
            attribute,
            value: text.to_owned(),
            reason: format!(
                "not a list of distinct sites' stamps separated by single spaces (at most {MAX_BASE_STAMPS})"
            ),
        })
    })
}

fn parse_hlc(r: &XmlReader<'_>, attribute: &'static str, text: &str) -> Result<Hlc, DecodeError> {
    Hlc::parse(text).map_err(|e| {
        r.error(DecodeErrorKind::BadAttribute { attribute, value: text.to_owned(), reason: e.to_string() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_with_more_versions_than_any_family_makes_is_refused_before_they_are_sorted_out() {
        let site = "0123456789abcdef0123456789abcdef";
        let versions: String = (0..=MAX_VERSIONS_PER_FIELD)
            .map(|i| {
                format!(
                    "    <f c=\"x\" h=\"{:012x}0000{site}\" t=\"text\">v{i}</f>\n",
                    0x019a_a4b6_4507_u64 + i as u64
                )
            })
            .collect();
        let body = format!(
            "<patient-file format=\"1\" patient=\"p1\">\n  <row table=\"patients\" pk=\"p1\" cl=\"1\">\n{versions}  </row>\n</patient-file>\n"
        );
        let error = decode_patient(&super::super::seal(body.into_bytes()), Limits::default()).unwrap_err();
        assert!(error.to_string().contains("has 65 versions; clinicsync keeps at most 64"), "{error}");
    }

    #[test]
    fn reals_round_trip_bit_for_bit() {
        let cases = [
            0.0,
            -0.0,
            1.5,
            0.1,
            -123.456,
            1e300,
            -1e-300,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::from_bits(0x7ff8_0000_0000_0001),
        ];
        for r in cases {
            let text = encode_real(r);
            let back = decode_real(&text).unwrap();
            assert_eq!(back.to_bits(), r.to_bits(), "{r:e} -> {text}");
        }
    }

    #[test]
    fn number_words_are_refused() {
        assert!(decode_real("infinity").is_err());
        assert!(decode_real("NaN").is_err());
        assert!(decode_real("").is_err());
    }
}
