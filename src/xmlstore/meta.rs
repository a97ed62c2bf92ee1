//! The family manifest (`clinicsync.xml`) and the site files
//! (`sites/<site>.xml`). A site file is written only by its own site.

use super::error::{DecodeError, DecodeErrorKind};
use super::reader::{Item, Limits, XmlReader, element_name, open_root, optional, required};
use super::text::push_attr;
use super::trailer;
use crate::model::{FamilyId, Hlc, SiteId};

/// The folder format this build writes and reads.
pub const FOLDER_FORMAT: u32 = 1;

/// `clinicsync.xml`: what makes a folder a sync family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub family: FamilyId,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The family's data was deleted from the folder (`clinicsync family
    /// delete`): by which site, and when. The manifest stays as the note.
    pub deleted: Option<(SiteId, u64)>,
}

/// `sites/<site>.xml`: what a site publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteFile {
    pub site: SiteId,
    pub family: FamilyId,
    pub name: String,
    pub app_version: String,
    /// The highest change-log segment this site has written completely.
    pub head_seq: u64,
    /// The lowest segment it still keeps (`head_seq + 1` when it keeps none).
    pub oldest_seq: u64,
    /// The last segment it applied from each other site.
    pub acks: std::collections::BTreeMap<SiteId, u64>,
    /// For each other site, the latest of its stamps applied from its log
    /// (`stamp` on `<ack>`): a tombstone that site stamped at or before it
    /// has reached this site.
    pub ack_stamps: std::collections::BTreeMap<SiteId, Hlc>,
    /// The latest delete stamp among the tombstones this site purged.
    pub purge_horizon: Option<Hlc>,
    /// Last run that ended `ok`, milliseconds since the Unix epoch.
    pub last_sync_ms: Option<u64>,
    /// When the site left the family (`clinicsync detach`): the others no
    /// longer wait for it.
    pub left_ms: Option<u64>,
    /// A one-way fingerprint of the machine the site runs on.
    pub machine: String,
    /// A fingerprint of the table mapping the site replicates.
    pub mapping: String,
    /// Rows this site purged lately (`<purged>`): a site returning after
    /// the purge deletes exactly these, whether or not their files are in
    /// its folder yet.
    pub purged: Vec<PurgedKey>,
}

/// A row a site purged: its key, the causal length of its tombstone and
/// what its delete saw (per site, the latest stamp; the delete's own stamp
/// among them), so that a returning site can tell which of its edits the
/// delete did not see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgedKey {
    pub table: String,
    pub pk: String,
    pub cl: u64,
    pub deleted: crate::model::Base,
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn format_time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn parse_time(text: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(text).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let deleted = match m.deleted {
        Some((site, ms)) => format!(" deleted-by=\"{site}\" deleted=\"{}\"", format_time(ms)),
        None => String::new(),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clinicsync-family format=\"{FOLDER_FORMAT}\" family=\"{}\" created=\"{}\"{deleted}/>\n",
        m.family,
        format_time(m.created_ms)
    );
    trailer::seal(body.into_bytes())
}

pub fn decode_manifest(file: &[u8]) -> Result<Manifest, DecodeError> {
    let (r, attrs, _) = read_root(file, "clinicsync-family")?;
    let family = required(&r, &attrs, "clinicsync-family", "family")?;
    let family = FamilyId::parse(family).map_err(|e| bad(&r, "family", family, e.to_string()))?;
    let created = required(&r, &attrs, "clinicsync-family", "created")?;
    let created_ms =
        parse_time(created).ok_or_else(|| bad(&r, "created", created, "not an RFC 3339 time".into()))?;
    let deleted = match (optional(&attrs, "deleted-by"), optional(&attrs, "deleted")) {
        (Some(site), Some(at)) => Some((
            SiteId::parse(site).map_err(|e| bad(&r, "deleted-by", site, e.to_string()))?,
            parse_time(at).ok_or_else(|| bad(&r, "deleted", at, "not an RFC 3339 time".into()))?,
        )),
        _ => None,
    };
    Ok(Manifest { family, created_ms, deleted })
}

pub fn encode_site(s: &SiteFile) -> Vec<u8> {
    let mut out = String::with_capacity(512 + 80 * s.acks.len());
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<site format=\"{FOLDER_FORMAT}\" id=\"{}\" family=\"{}\" name=\"",
        s.site, s.family
    ));
    push_attr(&mut out, &s.name);
    out.push_str("\" app-version=\"");
    push_attr(&mut out, &s.app_version);
    out.push_str(&format!("\" head-seq=\"{}\" oldest-seq=\"{}\"", s.head_seq, s.oldest_seq));
    if let Some(ms) = s.last_sync_ms {
        out.push_str(&format!(" last-sync=\"{}\"", format_time(ms)));
    }
    if let Some(ms) = s.left_ms {
        out.push_str(&format!(" left=\"{}\"", format_time(ms)));
    }
    out.push_str(" machine=\"");
    push_attr(&mut out, &s.machine);
    out.push_str("\" mapping=\"");
    push_attr(&mut out, &s.mapping);
    if let Some(h) = s.purge_horizon {
        out.push_str("\" purge-horizon=\"");
        h.push_encoded(&mut out);
    }
    if s.acks.is_empty() && s.purged.is_empty() {
        out.push_str("\"/>\n");
    } else {
        out.push_str("\">\n");
        for (site, seq) in &s.acks {
            match s.ack_stamps.get(site) {
                Some(h) => out
                    .push_str(&format!("  <ack site=\"{site}\" seq=\"{seq}\" stamp=\"{}\"/>\n", h.encode())),
                None => out.push_str(&format!("  <ack site=\"{site}\" seq=\"{seq}\"/>\n")),
            }
        }
        for p in &s.purged {
            out.push_str("  <purged table=\"");
            push_attr(&mut out, &p.table);
            out.push_str("\" pk=\"");
            push_attr(&mut out, &p.pk);
            out.push_str(&format!("\" cl=\"{}\"", p.cl));
            if !p.deleted.is_empty() {
                out.push_str(" deleted=\"");
                p.deleted.push_encoded(&mut out);
                out.push('"');
            }
            out.push_str("/>\n");
        }
        out.push_str("</site>\n");
    }
    trailer::seal(out.into_bytes())
}

pub fn decode_site(file: &[u8]) -> Result<SiteFile, DecodeError> {
    let (r, attrs, children) = read_root(file, "site")?;
    let site_text = required(&r, &attrs, "site", "id")?;
    let site = SiteId::parse(site_text).map_err(|e| bad(&r, "id", site_text, e.to_string()))?;
    let family_text = required(&r, &attrs, "site", "family")?;
    let family = FamilyId::parse(family_text).map_err(|e| bad(&r, "family", family_text, e.to_string()))?;
    let head_text = required(&r, &attrs, "site", "head-seq")?;
    let head_seq =
        head_text.parse().map_err(|_| bad(&r, "head-seq", head_text, "not a whole number".into()))?;
    let oldest_seq = match optional(&attrs, "oldest-seq") {
        None => 1,
        Some(t) => t.parse().map_err(|_| bad(&r, "oldest-seq", t, "not a whole number".into()))?,
    };
    let last_sync_ms = match optional(&attrs, "last-sync") {
        None => None,
        Some(t) => Some(parse_time(t).ok_or_else(|| bad(&r, "last-sync", t, "not an RFC 3339 time".into()))?),
    };
    let left_ms = match optional(&attrs, "left") {
        None => None,
        Some(t) => Some(parse_time(t).ok_or_else(|| bad(&r, "left", t, "not an RFC 3339 time".into()))?),
    };
    let mut acks = std::collections::BTreeMap::new();
    let mut ack_stamps = std::collections::BTreeMap::new();
    let mut purged = Vec::new();
    for (name, child) in &children {
        if name == "purged" {
            let table = required(&r, child, "purged", "table")?.to_owned();
            let pk = required(&r, child, "purged", "pk")?.to_owned();
            let cl_text = required(&r, child, "purged", "cl")?;
            let cl: u64 = cl_text
                .parse()
                .ok()
                .filter(|cl| cl % 2 == 0 && *cl > 0)
                .ok_or_else(|| bad(&r, "cl", cl_text, "not the causal length of a deleted row".into()))?;
            let deleted = match optional(child, "deleted") {
                None => crate::model::Base::default(),
                Some(t) => crate::model::Base::parse(t, 64).ok_or_else(|| {
                    bad(
                        &r,
                        "deleted",
                        t,
                        "not a list of distinct sites' stamps separated by single spaces".into(),
                    )
                })?,
            };
            purged.push(PurgedKey { table, pk, cl, deleted });
            continue;
        }
        if name != "ack" {
            continue;
        }
        let site_text = required(&r, child, "ack", "site")?;
        let peer = SiteId::parse(site_text).map_err(|e| bad(&r, "site", site_text, e.to_string()))?;
        let seq_text = required(&r, child, "ack", "seq")?;
        let seq = seq_text.parse().map_err(|_| bad(&r, "seq", seq_text, "not a whole number".into()))?;
        acks.insert(peer, seq);
        if let Some(t) = optional(child, "stamp") {
            ack_stamps.insert(peer, Hlc::parse(t).map_err(|e| bad(&r, "stamp", t, e.to_string()))?);
        }
    }
    let purge_horizon = match optional(&attrs, "purge-horizon") {
        None => None,
        Some(t) => Some(Hlc::parse(t).map_err(|e| bad(&r, "purge-horizon", t, e.to_string()))?),
    };
    // Shown to people, in a terminal and on the page: one line of text.
    for attribute in ["name", "app-version"] {
        if let Some(text) = optional(&attrs, attribute).filter(|t| t.chars().any(char::is_control)) {
            return Err(bad(
                &r,
                attribute,
                text,
                "it holds control characters (line breaks, escapes), which clinicsync never writes".into(),
            ));
        }
    }
    Ok(SiteFile {
        site,
        family,
        name: optional(&attrs, "name").unwrap_or_default().to_owned(),
        app_version: optional(&attrs, "app-version").unwrap_or_default().to_owned(),
        head_seq,
        oldest_seq,
        acks,
        ack_stamps,
        purge_horizon,
        last_sync_ms,
        left_ms,
        machine: optional(&attrs, "machine").unwrap_or_default().to_owned(),
        mapping: optional(&attrs, "mapping").unwrap_or_default().to_owned(),
        purged,
    })
}

fn bad(r: &XmlReader<'_>, attribute: &'static str, value: &str, reason: String) -> DecodeError {
    r.error(DecodeErrorKind::BadAttribute { attribute, value: value.to_owned(), reason })
}

/// Reads a small metadata file's root element and its attributes. Child
/// elements that a later version of format 1 may add are skipped.
type Attrs = Vec<(String, String)>;
/// A root element read: the reader, its attributes, its empty children.
type Root<'a> = (XmlReader<'a>, Attrs, Vec<(String, Attrs)>);

fn read_root<'a>(file: &'a [u8], expected: &'static str) -> Result<Root<'a>, DecodeError> {
    let limits = Limits { max_file_bytes: 4 << 20, max_elements: 100_000, ..Limits::default() };
    let super::reader::Root { reader: mut r, attrs, empty } =
        open_root(file, limits, expected, FOLDER_FORMAT)?;
    let mut children = Vec::new();
    if !empty {
        let mut depth = 1usize;
        while depth > 0 {
            match r.next()? {
                Item::Start(_) => depth += 1,
                Item::End => depth -= 1,
                Item::Empty(e) if depth == 1 => children.push((
                    element_name(&e),
                    r.attributes(&e)?.into_iter().map(|(k, v)| (k.to_owned(), v.into_owned())).collect(),
                )),
                Item::Empty(_) | Item::Text(_) => {}
                Item::Eof => {
                    return Err(
                        r.error(DecodeErrorKind::Unexpected("the end of the file inside the root element"))
                    );
                }
            }
        }
    }
    r.expect_eof()?;
    Ok((r, attrs, children))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_files_round_trip() {
        let s = SiteFile {
            site: SiteId::from_bytes([1; 16]),
            family: FamilyId::from_bytes([2; 16]),
            name: "Front desk \"A\" & <co>".into(),
            app_version: "0.1.0".into(),
            head_seq: 42,
            oldest_seq: 7,
            acks: [(SiteId::from_bytes([9; 16]), 3), (SiteId::from_bytes([8; 16]), 0)].into_iter().collect(),
            ack_stamps: [(
                SiteId::from_bytes([9; 16]),
                Hlc::new(1_700_000_000_000, 2, SiteId::from_bytes([9; 16])),
            )]
            .into_iter()
            .collect(),
            purge_horizon: Some(Hlc::new(1_699_000_000_000, 0, SiteId::from_bytes([8; 16]))),
            last_sync_ms: Some(1_700_000_000_123),
            left_ms: Some(1_700_000_000_456),
            machine: "abc".into(),
            mapping: "def".into(),
            purged: vec![
                PurgedKey {
                    table: "clinical_notes".into(),
                    pk: "a \"key\" & <more>".into(),
                    cl: 4,
                    deleted: crate::model::Base::new([
                        Hlc::new(1_699_000_000_000, 0, SiteId::from_bytes([8; 16])),
                        Hlc::new(1_698_000_000_000, 3, SiteId::from_bytes([9; 16])),
                    ]),
                },
                PurgedKey { table: "patients".into(), pk: "p1".into(), cl: 2, deleted: Default::default() },
            ],
        };
        assert_eq!(decode_site(&encode_site(&s)).unwrap(), s);
        // A causal length that is not a deletion's is refused.
        let sealed = encode_site(&s);
        let body = std::str::from_utf8(trailer::unseal(&sealed).unwrap()).unwrap();
        let odd = trailer::seal(body.replace("cl=\"4\"", "cl=\"3\"").into_bytes());
        let refused = decode_site(&odd).unwrap_err().to_string();
        assert!(refused.contains("causal length"), "{refused}");
        let m =
            Manifest { family: FamilyId::from_bytes([3; 16]), created_ms: 1_700_000_000_000, deleted: None };
        assert_eq!(decode_manifest(&encode_manifest(&m)).unwrap(), m);
        let gone = Manifest { deleted: Some((SiteId::from_bytes([4; 16]), 1_700_000_100_000)), ..m };
        assert_eq!(decode_manifest(&encode_manifest(&gone)).unwrap(), gone);
    }
}
