//! Identifiers: sites, families and patients, and the file name a patient id
//! maps to. Every name clinicsync writes into the folder is lowercase hex.

use std::fmt;

use sha2::{Digest, Sha256};

/// A 128-bit identifier shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteId([u8; 16]);

/// The id of a sync family (one shared folder), same shape as a site id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FamilyId([u8; 16]);

/// Why a hex identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not 32 lowercase hex digits")]
pub struct IdParseError {
    text: String,
}

fn parse_hex16(text: &str) -> Result<[u8; 16], IdParseError> {
    let err = || IdParseError { text: text.chars().take(64).collect() };
    let bytes = text.as_bytes();
    if bytes.len() != 32 {
        return Err(err());
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = hex_digit(pair[0]).ok_or_else(err)?;
        let lo = hex_digit(pair[1]).ok_or_else(err)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        f.write_char(HEX[usize::from(b >> 4)] as char)?;
        f.write_char(HEX[usize::from(b & 15)] as char)?;
    }
    Ok(())
}

/// Appends `value` as exactly `digits` lowercase hex digits.
pub(crate) fn push_hex_fixed(out: &mut String, value: u64, digits: u32) {
    for i in (0..digits).rev() {
        out.push(HEX[((value >> (i * 4)) & 15) as usize] as char);
    }
}

macro_rules! hex_id {
    ($ty:ident) => {
        impl $ty {
            /// Builds the id from 16 bytes (from a random source at the edge).
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }
            /// Parses 32 lowercase hex digits.
            pub fn parse(text: &str) -> Result<Self, IdParseError> {
                parse_hex16(text).map(Self)
            }
            /// The raw 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
            /// The first 8 hex digits, the short form shown to people.
            pub fn short(&self) -> String {
                short_id(&self.to_string()).to_owned()
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self)
            }
        }
    };
}
hex_id!(SiteId);
hex_id!(FamilyId);

/// A patient's primary key as the app stores it (normally a UUID).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PatientId(pub String);

impl PatientId {
    /// The 32-hex-digit file stem of this patient's file.
    pub fn file_stem(&self) -> String {
        patient_file_name(&self.0)
    }
}

impl fmt::Display for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The 32 lowercase hex digits naming a patient's file: the id's own digits
/// when it is a UUID (any case, with or without hyphens), else the first 32
/// hex digits of sha256(id).
pub fn patient_file_name(id: &str) -> String {
    let digits: String = id.chars().filter(|c| *c != '-').collect();
    let hyphens_ok = id.len() == 32 || (id.len() == 36 && uuid_hyphens(id));
    if hyphens_ok && digits.len() == 32 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return digits.to_ascii_lowercase();
    }
    let hash = Sha256::digest(id.as_bytes());
    let mut out = String::with_capacity(32);
    write_hex(&mut out, &hash[..16]).expect("writing to a String cannot fail");
    out
}

fn uuid_hyphens(id: &str) -> bool {
    let b = id.as_bytes();
    b[8] == b'-' && b[13] == b'-' && b[18] == b'-' && b[23] == b'-'
}

/// Appends `bytes` as lowercase hex to a string.
pub fn write_hex_bytes(out: &mut String, bytes: &[u8]) {
    write_hex(out, bytes).expect("writing to a String cannot fail");
}

/// The shard directory (two hex digits) of a patient file stem.
pub fn shard_of(stem: &str) -> String {
    let hash = Sha256::digest(stem.as_bytes());
    format!("{:02x}", hash[0])
}

/// How a site or family id is shown to people: its first 8 hex digits
/// (the whole text when shorter, as an id read from elsewhere may be).
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_keep_their_digits() {
        assert_eq!(
            patient_file_name("3F2504E0-4F89-11D3-9A0C-0305E82C3301"),
            "3f2504e04f8911d39a0c0305e82c3301"
        );
        assert_eq!(patient_file_name("3f2504e04f8911d39a0c0305e82c3301"), "3f2504e04f8911d39a0c0305e82c3301");
    }

    #[test]
    fn other_ids_are_hashed() {
        let name = patient_file_name("P-0001");
        assert_eq!(name.len(), 32);
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // A 36-character id with hyphens in the wrong places is not a UUID.
        let odd = "3f2504e04-f8911d39a0c0305e82c3301---";
        assert_ne!(patient_file_name(odd), "3f2504e04f8911d39a0c0305e82c3301");
    }

    #[test]
    fn site_ids_round_trip_and_refuse_bad_text() {
        let id = SiteId::from_bytes([0xab; 16]);
        assert_eq!(SiteId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(id.short(), "abababab");
        assert!(SiteId::parse("ABABABABABABABABABABABABABABABAB").is_err());
        assert!(SiteId::parse("abab").is_err());
    }
}
