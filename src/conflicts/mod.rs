//! Recognising what a name in the folder is: one of our files, a cloud
//! client's conflict copy of one, or something else. Pure: names in,
//! classification out.
//!
//! Every name clinicsync writes is 32 lowercase hex digits plus `.xml`, and
//! every cloud client keeps the original stem as the prefix of its conflict
//! copy, so the grammar is: a 32-hex stem, then anything that does not
//! continue the hex run. The full catalogue of client spellings, with
//! fixtures, belongs to the conflict-copy work; this rule already maps the
//! common forms and never mistakes another patient's file for a copy.

/// What a file name in a patient shard directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatientName {
    /// `<stem>.xml`, exactly as clinicsync writes it.
    Original { stem: String },
    /// A conflict copy (or other decorated copy) of `<stem>.xml`.
    Copy { stem: String },
    /// Not a clinicsync name.
    Unknown,
}

/// Classifies a file name found in `patients/<shard>/`. The caller has
/// already dropped provider temporary and placeholder names.
pub fn classify_patient_name(name: &str) -> PatientName {
    let bytes = name.as_bytes();
    if bytes.len() < 32 || !name.is_char_boundary(32) {
        return PatientName::Unknown;
    }
    let (stem, rest) = name.split_at(32);
    if !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return PatientName::Unknown;
    }
    let lower = stem.to_ascii_lowercase();
    if rest == ".xml" && lower == stem {
        return PatientName::Original { stem: lower };
    }
    // A longer run of hex digits or letters is another name, not a copy.
    match rest.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() => PatientName::Unknown,
        Some(_) => PatientName::Copy { stem: lower },
        None => PatientName::Unknown,
    }
}

/// True when `name` in `sites/` is a decorated copy of our own site file
/// (our site id is live on two machines).
pub fn is_copy_of_site_file(name: &str, site_hex: &str) -> bool {
    name != format!("{site_hex}.xml") && name.to_ascii_lowercase().starts_with(site_hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEM: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn originals_copies_and_strangers() {
        assert_eq!(
            classify_patient_name(&format!("{STEM}.xml")),
            PatientName::Original { stem: STEM.into() }
        );
        for copy in [
            format!("{STEM}.sync-conflict-20240131-142233-7QKZ3XN.xml"),
            format!("{STEM} (conflicted copy 2024-01-31 142233).xml"),
            format!("{STEM}-DESKTOP-IC1G6H9.xml"),
            format!("{STEM} 2.xml"),
            format!("{STEM}.xml.conflict1"),
            format!("{} (Case Conflict).xml", STEM.to_uppercase()),
        ] {
            assert_eq!(classify_patient_name(&copy), PatientName::Copy { stem: STEM.into() }, "{copy}");
        }
        for other in [format!("{STEM}0.xml"), "notes.txt".to_owned(), format!("{}.xml", &STEM[..31])] {
            assert_eq!(classify_patient_name(&other), PatientName::Unknown, "{other}");
        }
    }
}
