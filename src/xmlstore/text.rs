//! Escaping for the canonical writer, and the rule for which text XML 1.0
//! can carry at all.

/// True when every character may appear in an XML 1.0 document.
pub fn is_xml_safe(text: &str) -> bool {
    // Most text is ASCII: one pass over the bytes.
    if text.bytes().all(|b| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e)) {
        return true;
    }
    text.chars().all(
        |c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..),
    )
}

/// Appends `text`, replacing each character that `escape` maps; runs of
/// other characters are copied in one go.
fn push_escaped(out: &mut String, text: &str, escape: impl Fn(u8) -> Option<&'static str>) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // Every byte escaped is ASCII, so `i` is always a char boundary.
        if let Some(replacement) = escape(b) {
            out.push_str(&text[start..i]);
            out.push_str(replacement);
            start = i + 1;
        }
    }
    out.push_str(&text[start..]);
}

/// Escapes element content. CR is written as a character reference because
/// XML parsers turn a raw CR LF into LF; everything else stays literal.
pub(crate) fn push_content(out: &mut String, text: &str) {
    push_escaped(out, text, |b| match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'\r' => Some("&#13;"),
        _ => None,
    });
}

/// Escapes an attribute value, including the whitespace that attribute
/// normalisation would otherwise turn into spaces.
pub(crate) fn push_attr(out: &mut String, text: &str) {
    push_escaped(out, text, |b| match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'"' => Some("&quot;"),
        b'\r' => Some("&#13;"),
        b'\n' => Some("&#10;"),
        b'\t' => Some("&#9;"),
        _ => None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_not_xml_safe() {
        assert!(is_xml_safe("tab\tcr\rlf\n emoji 🩺"));
        assert!(!is_xml_safe("bell\u{7}"));
        assert!(!is_xml_safe("\u{FFFE}"));
        assert!(!is_xml_safe("nul\0"));
    }
}
