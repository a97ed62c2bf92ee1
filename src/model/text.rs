//! Text that came from another machine, made safe to show.

/// Text for a terminal: every string that may have come from the folder
/// (a site's name, a file's name, a key, a sentence quoting them) has its
/// control characters (escape sequences, carriage returns, new lines that
/// would forge a line) and text-direction overrides shown as `\u{..}`.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn control_characters_and_direction_overrides_are_shown_not_sent() {
        assert_eq!(shown("Front desk"), "Front desk");
        assert_eq!(shown("a\u{1b}]0;x\u{7}b\nc\u{202e}d"), "a\\u{1b}]0;x\\u{7}b\\u{a}c\\u{202e}d");
    }
}
