//! Escaping for the canonical writer, and the rule for which text XML 1.0
//! can carry at all.

/// True when every character may appear in an XML 1.0 document.
pub fn is_xml_safe(text: &str) -> bool {
    text.chars().all(
        |c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..),
    )
}

/// Escapes element content. CR is written as a character reference because
/// XML parsers turn a raw CR LF into LF; everything else stays literal.
pub(crate) fn push_content(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// Escapes an attribute value, including the whitespace that attribute
/// normalisation would otherwise turn into spaces.
pub(crate) fn push_attr(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
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
