//! Streaming a document body: copied by the system (in the kernel where it
//! can), then the copy itself read in fixed-size pieces for its size, CRC32
//! and sha256, so what is checked is exactly what is placed, and a file of
//! any size takes the same small memory.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::model::{Body, write_hex_bytes};

/// The piece a body is read in.
const PIECE: usize = 256 << 10;

/// Copies `from` (all of it, from where it stands) into the new file
/// `to`, then reads the copy back for its checksums: the body the copy
/// holds. `std::io::copy` between two files copies in the kernel on Linux
/// (`copy_file_range`), so the bytes cross into this process once, to be
/// hashed.
pub fn copy_and_digest(from: &mut std::fs::File, to: &mut std::fs::File) -> io::Result<Body> {
    use std::io::Seek;
    io::copy(from, to)?;
    to.rewind()?;
    digest(to)
}

/// Copies `from` into `to` (all of it) and returns what was copied.
pub fn copy_digesting(from: &mut impl Read, to: &mut impl Write) -> io::Result<Body> {
    let mut sha = Sha256::new();
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    let mut piece = vec![0u8; PIECE];
    loop {
        let n = match from.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha.update(&piece[..n]);
        crc.update(&piece[..n]);
        to.write_all(&piece[..n])?;
        size += n as u64;
    }
    let mut hex = String::with_capacity(64);
    write_hex_bytes(&mut hex, &sha.finalize());
    Ok(Body::new(&hex, size, crc.finalize()).expect("sha256 gives 64 hex digits"))
}

/// What `from` holds, read to its end.
pub fn digest(from: &mut impl Read) -> io::Result<Body> {
    copy_digesting(from, &mut io::sink())
}

/// Why a copy of a body does not hold what it should: the sentence the log
/// and status show ("CRC file integrity check failed").
pub fn mismatch(expected: &Body, found: &Body) -> Option<String> {
    (expected != found).then(|| {
        format!(
            "CRC file integrity check failed: expected {} bytes, CRC32 {:08x}, sha256 {}; found {} bytes, CRC32 {:08x}, sha256 {}",
            expected.size,
            expected.crc32,
            expected.sha256(),
            found.size,
            found.crc32,
            found.sha256()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_carries_the_bytes_and_their_checksums() {
        let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        let body = copy_digesting(&mut bytes.as_slice(), &mut out).unwrap();
        assert_eq!(out, bytes);
        assert_eq!(body.size, 700_000);
        assert_eq!(body.crc32, crc32fast::hash(&bytes));
        let mut hex = String::new();
        write_hex_bytes(&mut hex, &Sha256::digest(&bytes));
        assert_eq!(body.sha256(), hex);
        assert_eq!(digest(&mut bytes.as_slice()).unwrap(), body);
        let mut damaged = bytes.clone();
        damaged[1234] ^= 1;
        let found = digest(&mut damaged.as_slice()).unwrap();
        let said = mismatch(&body, &found).unwrap();
        assert!(said.starts_with("CRC file integrity check failed: expected 700000 bytes"), "{said}");
        assert_eq!(mismatch(&body, &body), None);
    }
}
