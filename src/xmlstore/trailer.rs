//! The integrity trailer every file clinicsync writes ends with:
//! `<!--clinicsync sha256=HEX bytes=N-->` and a newline, over all bytes
//! before it. A file without a valid trailer is incomplete or damaged and is
//! never read further.

use sha2::{Digest, Sha256};

const PREFIX: &[u8] = b"<!--clinicsync sha256=";

/// Why a file's trailer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrailerError {
    #[error(
        "it has no clinicsync integrity trailer (it is still being written, was cut short, or is not a clinicsync file)"
    )]
    Missing,
    #[error("its integrity trailer is malformed")]
    Malformed,
    #[error("its trailer says {expected} bytes but {actual} precede it (incomplete or changed)")]
    Length { expected: u64, actual: u64 },
    #[error("its content does not match the sha256 in its trailer (damaged or changed)")]
    Hash,
}

/// Appends the trailer to `body`.
pub fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let hash = Sha256::digest(&body);
    let len = body.len();
    body.extend_from_slice(PREFIX);
    let mut hex = String::with_capacity(64);
    crate::model::write_hex_bytes(&mut hex, &hash);
    body.extend_from_slice(hex.as_bytes());
    body.extend_from_slice(format!(" bytes={len}-->\n").as_bytes());
    body
}

/// Checks the trailer and returns the body it covers.
pub fn unseal(file: &[u8]) -> Result<&[u8], TrailerError> {
    let trimmed = file.strip_suffix(b"\n").unwrap_or(file);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    if !trimmed.ends_with(b"-->") {
        return Err(TrailerError::Missing);
    }
    let start = memchr::memmem::rfind(trimmed, PREFIX).ok_or(TrailerError::Missing)?;
    let inner = &trimmed[start + PREFIX.len()..trimmed.len() - 3];
    let inner = std::str::from_utf8(inner).map_err(|_| TrailerError::Malformed)?;
    let (hex, bytes) = inner.split_once(" bytes=").ok_or(TrailerError::Malformed)?;
    let expected: u64 = bytes.parse().map_err(|_| TrailerError::Malformed)?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(TrailerError::Malformed);
    }
    let body = &file[..start];
    if body.len() as u64 != expected {
        return Err(TrailerError::Length { expected, actual: body.len() as u64 });
    }
    let mut actual = String::with_capacity(64);
    crate::model::write_hex_bytes(&mut actual, &Sha256::digest(body));
    if actual != hex {
        return Err(TrailerError::Hash);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bodies_unseal() {
        let sealed = seal(b"<a/>\n".to_vec());
        assert_eq!(unseal(&sealed).unwrap(), b"<a/>\n");
    }

    #[test]
    fn every_cut_is_detected() {
        let sealed = seal(b"<patient-file>hello</patient-file>\n".to_vec());
        for cut in 0..sealed.len() - 1 {
            assert!(unseal(&sealed[..cut]).is_err(), "cut at {cut} was accepted");
        }
    }

    #[test]
    fn a_changed_byte_is_detected() {
        let mut sealed = seal(b"<a>1</a>\n".to_vec());
        sealed[3] = b'2';
        assert_eq!(unseal(&sealed), Err(TrailerError::Hash));
    }
}
