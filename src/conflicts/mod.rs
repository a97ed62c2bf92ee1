//! What a path in the folder is: one of our files, a cloud client's
//! conflict copy of one (and which client made it), provider litter, or
//! something else. Pure: names in, classification out.
//!
//! Every name clinicsync writes is lowercase hex or decimal digits plus
//! `.xml`, and every cloud client keeps the original stem as the prefix of
//! its copy's name. So the grammar is: the stem, then anything that does not
//! continue the digit run and still names an `.xml` file. The client is read
//! from what follows the stem, only to label the log; an unfamiliar
//! decoration is still a copy. Folders are matched the same way, so
//! `patients/ab (Selective Sync Conflict)/X.xml` is a copy of
//! `patients/ab/X.xml`.

mod ignore;

pub use ignore::IgnoreRules;

use crate::model::shard_of;

/// The cloud client whose naming a copy follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    Syncthing,
    Dropbox,
    #[serde(rename = "onedrive")]
    OneDrive,
    GoogleDrive,
    #[serde(rename = "icloud")]
    ICloud,
    Nextcloud,
    Seafile,
    Rclone,
    Resilio,
    Synology,
    #[serde(rename = "pcloud")]
    PCloud,
    /// A decorated name no known client makes (or a case variant).
    Unrecognised,
}

impl Client {
    /// How the log names the client.
    pub fn label(self) -> &'static str {
        match self {
            Client::Syncthing => "Syncthing",
            Client::Dropbox => "Dropbox",
            Client::OneDrive => "OneDrive",
            Client::GoogleDrive => "Google Drive",
            Client::ICloud => "iCloud Drive",
            Client::Nextcloud => "Nextcloud/ownCloud",
            Client::Seafile => "Seafile",
            Client::Rclone => "rclone bisync",
            Client::Resilio => "Resilio Sync",
            Client::Synology => "Synology Drive",
            Client::PCloud => "pCloud",
            Client::Unrecognised => "an unrecognised cloud client",
        }
    }
}

/// Which of our files a path is (or is a copy of).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `clinicsync.xml`.
    Manifest,
    /// `sites/<site>.xml`.
    Site { site: String },
    /// `log/<site>/<seq>.xml`.
    Segment { site: String, seq: u64 },
    /// `patients/<shard>/<stem>.xml`.
    Patient { stem: String },
}

impl FileKind {
    /// Where the original of this kind of file lives.
    pub fn path(&self) -> String {
        match self {
            FileKind::Manifest => MANIFEST.to_owned(),
            FileKind::Site { site } => format!("{SITES}/{site}.xml"),
            FileKind::Segment { site, seq } => format!("{LOG}/{site}/{seq:010}.xml"),
            FileKind::Patient { stem } => format!("{PATIENTS}/{}/{stem}.xml", shard_of(stem)),
        }
    }
}

/// What a folder-relative path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// One of our files, exactly where and as we write it.
    Original(FileKind),
    /// A copy of one: a conflict copy, a decorated folder, a case variant
    /// or a file in the wrong shard.
    Copy { of: FileKind, client: Client },
    /// Not a clinicsync name.
    Unknown,
}

const MANIFEST: &str = "clinicsync.xml";
const SITES: &str = "sites";
const LOG: &str = "log";
const PATIENTS: &str = "patients";

/// Classifies a path relative to the folder root, `/`-separated. The
/// caller drops provider litter first ([`IgnoreRules`]).
pub fn classify_path(path: &str) -> Classified {
    let parts: Vec<&str> = path.split('/').collect();
    let mut client = None;
    let mut note = |c: Option<Client>| {
        if let Some(c) = c {
            client = client.or(Some(c));
        }
    };
    let kind = match parts.as_slice() {
        [name] => match name_stem(name, MANIFEST.len() - 4, |b| b.is_ascii_lowercase(), true) {
            Some((stem, decoration)) if stem == "clinicsync" => {
                note(decoration);
                FileKind::Manifest
            }
            _ => return Classified::Unknown,
        },
        [top, name] => {
            let Some(d) = literal_dir(top, SITES) else { return Classified::Unknown };
            note(d);
            let Some((site, decoration)) = name_stem(name, 32, |b| b.is_ascii_hexdigit(), true) else {
                return Classified::Unknown;
            };
            note(decoration);
            FileKind::Site { site }
        }
        [top, dir, name] if top.get(..LOG.len()).is_some_and(|h| h.eq_ignore_ascii_case(LOG)) => {
            let Some(d) = literal_dir(top, LOG) else { return Classified::Unknown };
            note(d);
            let Some((site, d)) = name_stem(dir, 32, |b| b.is_ascii_hexdigit(), false) else {
                return Classified::Unknown;
            };
            note(d);
            let Some((seq, d)) = name_stem(name, 10, |b| b.is_ascii_digit(), true) else {
                return Classified::Unknown;
            };
            note(d);
            let Ok(seq) = seq.parse() else { return Classified::Unknown };
            FileKind::Segment { site, seq }
        }
        [top, dir, name] => {
            let Some(d) = literal_dir(top, PATIENTS) else { return Classified::Unknown };
            note(d);
            let Some((shard, d)) = name_stem(dir, 2, |b| b.is_ascii_hexdigit(), false) else {
                return Classified::Unknown;
            };
            note(d);
            let Some((stem, d)) = name_stem(name, 32, |b| b.is_ascii_hexdigit(), true) else {
                return Classified::Unknown;
            };
            note(d);
            if shard != shard_of(&stem) {
                // Data all the same: merged like a copy.
                note(Some(Client::Unrecognised));
            }
            FileKind::Patient { stem }
        }
        _ => return Classified::Unknown,
    };
    match client {
        None => Classified::Original(kind),
        Some(client) => Classified::Copy { of: kind, client },
    }
}

/// The client, when `name` is a decorated copy of the folder `original`
/// (`patients (Selective Sync Conflict)` of `patients`).
pub fn decorated_copy_of(name: &str, original: &str) -> Option<Client> {
    literal_dir(name, original).flatten()
}

/// `Some(None)` when `name` is exactly `literal`, `Some(Some(client))` when
/// it is a decorated copy of it, `None` otherwise.
fn literal_dir(name: &str, literal: &str) -> Option<Option<Client>> {
    if name == literal {
        return Some(None);
    }
    let rest = strip_prefix_ignore_case(name, literal)?;
    decoration(rest, false).map(Some)
}

/// Splits `name` into a stem of `len` characters matching `digit` and its
/// decoration. Returns the stem in lowercase and `None` for an undecorated
/// name, `Some(client)` for a copy. `file`: the name must end in `.xml` (a
/// copy must still hold `.xml` somewhere after the stem).
fn name_stem(
    name: &str,
    len: usize,
    digit: impl Fn(u8) -> bool,
    file: bool,
) -> Option<(String, Option<Client>)> {
    if name.len() < len || !name.is_char_boundary(len) {
        return None;
    }
    let (stem, rest) = name.split_at(len);
    if !stem.bytes().all(|b| digit(b.to_ascii_lowercase())) {
        return None;
    }
    let lower = stem.to_ascii_lowercase();
    let exact = if file { rest == ".xml" } else { rest.is_empty() };
    if exact && lower == stem {
        return Some((lower, None));
    }
    if exact {
        // Same name, other case: a case-insensitive client's variant.
        return Some((lower, Some(Client::Unrecognised)));
    }
    decoration(rest, file).map(|client| (lower, Some(client)))
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &name[prefix.len()..])
}

/// What follows a stem in a copy's name: the client that decorates names
/// this way, or `None` when it is not a decoration (the name continues with
/// a letter or digit, so it is another name, or a file loses its `.xml`).
fn decoration(rest: &str, file: bool) -> Option<Client> {
    let first = rest.chars().next()?;
    if first.is_alphanumeric() {
        return None;
    }
    let lower = rest.to_lowercase();
    // A copy still ends in `.xml`, or in rclone's suffix after it; a
    // `.bak` or `~` someone made by hand is not ours to merge or delete.
    let names_xml =
        lower.ends_with(".xml") || lower.rsplit_once(".xml").is_some_and(|(_, tail)| is_rclone_suffix(tail));
    if file && !names_xml {
        return None;
    }
    Some(client_of(&lower))
}

/// Dropbox's "conflicted copy" in the languages it ships.
const DROPBOX_PHRASES: &[&str] = &[
    "'s conflicted copy",
    "\u{2019}s conflicted copy",
    "(case conflict",
    "(selective sync conflict",
    "copie en conflit",
    "in konflikt stehende kopie",
    "copia en conflicto",
    "copia in conflitto",
    "conflicterende kopie",
    "cópia em conflito",
    "cópia conflituosa",
    "kopia powodująca konflikt",
    "konfliktkopia",
    "konfliktkopi",
    "konfliktní kopie",
    "конфликтующая копия",
    "競合コピー",
    "冲突副本",
    "衝突複本",
    "충돌 사본",
];

/// Reads the client from a lowercased decoration.
fn client_of(rest: &str) -> Client {
    let before_ext = rest.rsplit_once(".xml").map_or(rest, |(head, _)| head);
    let after_ext = rest.rsplit_once(".xml").map_or("", |(_, tail)| tail);
    if rest.contains(".sync-conflict-") {
        Client::Syncthing
    } else if DROPBOX_PHRASES.iter().any(|p| rest.contains(p)) {
        Client::Dropbox
    } else if rest.contains("conflicted copy") || rest.contains("case clash") || rest.contains("_conflict-") {
        Client::Nextcloud
    } else if rest.contains("sfconflict") {
        Client::Seafile
    } else if is_rclone_suffix(after_ext) {
        Client::Rclone
    } else if before_ext.ends_with(".conflict") {
        Client::Resilio
    } else if before_ext.ends_with("_conflict") {
        Client::Synology
    } else if rest.contains("(conflicted)") {
        Client::PCloud
    } else if rest.contains("-safebackup-") {
        Client::OneDrive
    } else if is_counter(before_ext, " (", ")") {
        Client::GoogleDrive
    } else if is_counter(before_ext, " ", "") {
        Client::ICloud
    } else if before_ext.starts_with('-') {
        Client::OneDrive
    } else {
        Client::Unrecognised
    }
}

/// rclone bisync's `.conflict1` (1.64+), `..path1` (older) and
/// `.2024-01-31-conflict1` (a `--conflict-suffix` with a date), after the
/// extension; a copy of a copy repeats them (`.conflict2.conflict1`).
fn is_rclone_suffix(after_ext: &str) -> bool {
    let mut rest = after_ext;
    while !rest.is_empty() {
        let tail = if let Some(tail) = rest.strip_prefix("..path") {
            tail
        } else {
            // `.`, what the suffix setting put before `conflict` (a date,
            // a time: letters, digits, `-`, `_`, spaces), `conflict`.
            let Some(segment) = rest.strip_prefix('.') else { return false };
            let Some(at) = segment.find("conflict") else { return false };
            let dated = &segment[..at];
            if !dated.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_ ".contains(&b)) {
                return false;
            }
            &segment[at + "conflict".len()..]
        };
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &tail[digits..];
    }
    !after_ext.is_empty()
}

/// `open` + a number + `close`, the whole of `s`.
fn is_counter(s: &str, open: &str, close: &str) -> bool {
    s.strip_prefix(open)
        .and_then(|s| s.strip_suffix(close))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEM: &str = "0123456789abcdef0123456789abcdef";

    fn patient(name: &str) -> Classified {
        classify_path(&format!("{PATIENTS}/{}/{name}", shard_of(STEM)))
    }

    #[test]
    fn originals_copies_and_strangers() {
        let of = FileKind::Patient { stem: STEM.into() };
        assert_eq!(patient(&format!("{STEM}.xml")), Classified::Original(of.clone()));
        assert_eq!(
            patient(&format!("{STEM}.sync-conflict-20240131-142233-7QKZ3XN.xml")),
            Classified::Copy { of: of.clone(), client: Client::Syncthing }
        );
        for other in [format!("{STEM}0.xml"), "notes.txt".to_owned(), format!("{STEM}.txt")] {
            assert_eq!(patient(&other), Classified::Unknown, "{other}");
        }
        assert_eq!(
            classify_path(&format!("{LOG}/{STEM}/0000000007.xml")),
            Classified::Original(FileKind::Segment { site: STEM.into(), seq: 7 })
        );
        assert_eq!(
            classify_path(&format!("{LOG}/{STEM}/0000000007 (1).xml")),
            Classified::Copy {
                of: FileKind::Segment { site: STEM.into(), seq: 7 },
                client: Client::GoogleDrive
            }
        );
        assert_eq!(classify_path("clinicsync.xml"), Classified::Original(FileKind::Manifest));
        assert_eq!(
            classify_path("clinicsync 2.xml"),
            Classified::Copy { of: FileKind::Manifest, client: Client::ICloud }
        );
        assert_eq!(classify_path("clinicsyncs.xml"), Classified::Unknown);
    }

    #[test]
    fn kinds_know_their_paths() {
        for path in [
            "clinicsync.xml".to_owned(),
            format!("{SITES}/{STEM}.xml"),
            format!("{LOG}/{STEM}/0000000012.xml"),
            format!("{PATIENTS}/{}/{STEM}.xml", shard_of(STEM)),
        ] {
            match classify_path(&path) {
                Classified::Original(kind) => assert_eq!(kind.path(), path),
                other => panic!("{path}: {other:?}"),
            }
        }
    }
}
