//! A document's body as the row carries it: the sha256, size and CRC32 of
//! the file, in clinicsync's own field of the row (`_cs_body`), and where
//! the body lies in the folder.

use std::fmt;

/// The field of a document row that names its body. It is a field like
/// any other (versions, a join, conflicts); the app's table has no such
/// column, so it is never shown there.
pub const BODY_FIELD: &str = "_cs_body";

/// The identity of one document body: what every copy is checked against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Body {
    /// 64 lowercase hex digits.
    sha256: String,
    pub size: u64,
    pub crc32: u32,
}

impl Body {
    /// A body from its checksums; `None` when `sha256` is not 64 lowercase
    /// hex digits.
    pub fn new(sha256: &str, size: u64, crc32: u32) -> Option<Body> {
        is_sha_hex(sha256).then(|| Body { sha256: sha256.to_owned(), size, crc32 })
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The field value: `sha256=HEX size=N crc32=HEX`.
    pub fn encode(&self) -> String {
        format!("sha256={} size={} crc32={:08x}", self.sha256, self.size, self.crc32)
    }

    /// Reads a field value written by [`Body::encode`]; `None` for anything
    /// else (a damaged or forged value names no body).
    pub fn parse(text: &str) -> Option<Body> {
        let mut parts = text.split(' ');
        let sha = parts.next()?.strip_prefix("sha256=")?;
        let size = parts.next()?.strip_prefix("size=")?;
        let crc = parts.next()?.strip_prefix("crc32=")?;
        if parts.next().is_some() || crc.len() != 8 || size.starts_with('+') {
            return None;
        }
        Body::new(sha, size.parse().ok()?, u32::from_str_radix(crc, 16).ok()?)
    }

    /// Where the body lies in the folder: `docs/<first two digits>/<sha256>`.
    pub fn folder_path(&self) -> String {
        body_path(&self.sha256)
    }
}

fn is_sha_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where the body with this sha256 (64 lowercase hex digits) lies.
pub fn body_path(sha256: &str) -> String {
    format!("docs/{}/{sha256}", &sha256[..2])
}

/// The sha256 a folder path names as a body, when it is exactly where a
/// body with that name lies.
pub fn body_at(path: &str) -> Option<&str> {
    let sha = path.rsplit('/').next()?;
    (is_sha_hex(sha) && path == body_path(sha)).then_some(sha)
}

/// A document's path as one file: names between `/` or `\`, without
/// empty and `.` names, in lower case (Windows and macOS do not tell `A.pdf`
/// from `a.pdf`). Two rows whose paths are the same here name one file.
pub fn same_file_key(path: &str) -> String {
    path.split(['/', '\\'])
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
        .to_lowercase()
}

impl fmt::Display for Body {
    /// How a body is named to people: its size and the start of its sha256.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, sha256 {}…", self.size, &self.sha256[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_name_one_file_have_one_key() {
        assert_eq!(same_file_key("Letters/a.pdf"), "letters/a.pdf");
        assert_eq!(same_file_key("./letters//A.PDF"), "letters/a.pdf");
        assert_eq!(same_file_key("letters\\a.pdf"), "letters/a.pdf");
        assert_ne!(same_file_key("letters/b.pdf"), "letters/a.pdf");
    }

    #[test]
    fn a_body_reads_back_what_it_writes_and_nothing_else() {
        let sha = "ab".repeat(32);
        let body = Body::new(&sha, 1234, 0xdead_beef).unwrap();
        assert_eq!(body.encode(), format!("sha256={sha} size=1234 crc32=deadbeef"));
        assert_eq!(Body::parse(&body.encode()), Some(body.clone()));
        assert_eq!(body.folder_path(), format!("docs/ab/{sha}"));
        assert_eq!(body_at(&body.folder_path()), Some(sha.as_str()));
        for not_a_body in
            [format!("docs/cd/{sha}"), format!("docs/ab/{sha}.x"), "docs/ab/cafe".into(), sha.clone()]
        {
            assert_eq!(body_at(&not_a_body), None, "{not_a_body}");
        }
        for bad in [
            "",
            "sha256=ab size=1 crc32=00000000",
            &format!("sha256={} size=1 crc32=00000000", "AB".repeat(32)),
            &format!("sha256={sha} size=-1 crc32=00000000"),
            &format!("sha256={sha} size=+1 crc32=00000000"),
            &format!("sha256={sha} size=1 crc32=0"),
            &format!("sha256={sha} size=1 crc32=00000000 extra"),
            &format!("sha256={sha}  size=1 crc32=00000000"),
        ] {
            assert_eq!(Body::parse(bad), None, "{bad}");
        }
    }
}
