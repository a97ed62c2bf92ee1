//! A defensive XML reader over one file's bytes: refuses DTDs, processing
//! instructions and CDATA, expands no entities beyond XML's five and
//! character references, enforces limits, and reports line numbers.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::DecodeError;
use super::error::DecodeErrorKind;

/// Limits on what one file may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest file accepted, in bytes.
    pub max_file_bytes: u64,
    /// Most elements in one file.
    pub max_elements: usize,
    /// Most rows in one file (a row costs more memory than its fields).
    pub max_rows: usize,
    /// Longest text of one element, in bytes.
    pub max_text_bytes: usize,
    /// Deepest nesting.
    pub max_depth: usize,
}

/// What every clinicsync reads and writes. They bound what one file costs
/// a run: a file at these limits decodes to at most about 100 MiB (about
/// 250 bytes per element for its model and the state it is joined with,
/// plus its bytes twice), and a run reads one such file at a time
/// (ARCHITECTURE.md, the invariant on a run's memory). The heaviest real patient (thousands of
/// rows over decades) stays several times below them; a writer never
/// writes a file beyond them (it says so instead), because every reader
/// would refuse it.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 16 << 20,
            max_elements: 150_000,
            max_rows: 25_000,
            max_text_bytes: 8 << 20,
            max_depth: 8,
        }
    }
}

impl Limits {
    /// Why an encoded file must not be written, if it would be refused.
    pub fn refusal(&self, file: &[u8]) -> Option<String> {
        if file.len() as u64 > self.max_file_bytes {
            return Some(format!(
                "it would be {} bytes, over the {}-byte limit every clinicsync reads",
                file.len(),
                self.max_file_bytes
            ));
        }
        // Every element starts with `<` followed by a name (a comment, the
        // declaration and end tags do not count); text holds no raw `<`, so
        // the gap between two is at least as long as any text in it.
        let (mut elements, mut rows, mut widest, mut last) = (0, 0, 0, 0);
        for i in memchr::memchr_iter(b'<', file) {
            elements += usize::from(file.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic()));
            rows += usize::from(file[i..].starts_with(b"<row "));
            widest = widest.max(i - last);
            last = i;
        }
        if elements > self.max_elements {
            return Some(format!(
                "it would hold {elements} elements, over the {} every clinicsync reads",
                self.max_elements
            ));
        }
        if rows > self.max_rows {
            return Some(format!(
                "it would hold {rows} rows, over the {} every clinicsync reads",
                self.max_rows
            ));
        }
        (widest > self.max_text_bytes).then(|| {
            format!(
                "a value in it would be over the {}-byte limit every clinicsync reads",
                self.max_text_bytes
            )
        })
    }
}

/// Most attributes on one element: clinicsync writes at most a dozen (a
/// site file's root), and later versions of the format may add some.
const MAX_ATTRIBUTES: usize = 32;

/// What the decoders see: only elements and their text.
pub(crate) enum Item<'a> {
    Start(BytesStart<'a>),
    Empty(BytesStart<'a>),
    End,
    Text(Cow<'a, str>),
    Eof,
}

pub(crate) struct XmlReader<'a> {
    input: &'a [u8],
    reader: Reader<&'a [u8]>,
    limits: Limits,
    elements: usize,
    depth: usize,
    /// Byte offset where the last returned event started.
    event_start: usize,
}

impl<'a> XmlReader<'a> {
    pub(crate) fn new(input: &'a [u8], limits: Limits) -> Result<Self, DecodeError> {
        if input.len() as u64 > limits.max_file_bytes {
            return Err(DecodeError::new(
                None,
                DecodeErrorKind::TooLarge { size: input.len() as u64, limit: limits.max_file_bytes },
            ));
        }
        if std::str::from_utf8(input).is_err() {
            return Err(DecodeError::new(None, DecodeErrorKind::NotUtf8));
        }
        let start = input.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(input.len());
        if input.get(start) != Some(&b'<') {
            return Err(DecodeError::new(Some(1), DecodeErrorKind::NotXml));
        }
        let mut reader = Reader::from_reader(input);
        let config = reader.config_mut();
        config.trim_text(false);
        config.check_end_names = true;
        config.expand_empty_elements = false;
        Ok(XmlReader { input, reader, limits, elements: 0, depth: 0, event_start: 0 })
    }

    /// The 1-based line of the last event returned.
    pub(crate) fn line(&self) -> usize {
        let end = self.event_start.min(self.input.len());
        1 + self.input[..end].iter().filter(|&&b| b == b'\n').count()
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(Some(self.line()), kind)
    }

    pub(crate) fn next(&mut self) -> Result<Item<'a>, DecodeError> {
        loop {
            self.event_start = self.reader.buffer_position() as usize;
            let event =
                self.reader.read_event().map_err(|e| self.error(DecodeErrorKind::Xml(e.to_string())))?;
            match event {
                Event::Start(e) => {
                    self.count_element()?;
                    self.depth += 1;
                    if self.depth > self.limits.max_depth {
                        return Err(self.error(DecodeErrorKind::TooDeep));
                    }
                    return Ok(Item::Start(e));
                }
                Event::Empty(e) => {
                    self.count_element()?;
                    return Ok(Item::Empty(e));
                }
                Event::End(_) => {
                    self.depth = self.depth.saturating_sub(1);
                    return Ok(Item::End);
                }
                Event::Text(t) => {
                    if t.len() > self.limits.max_text_bytes {
                        return Err(
                            self.error(DecodeErrorKind::TextTooLong { limit: self.limits.max_text_bytes })
                        );
                    }
                    let text = t.unescape().map_err(|e| self.error(DecodeErrorKind::Xml(e.to_string())))?;
                    return Ok(Item::Text(text));
                }
                Event::Eof => return Ok(Item::Eof),
                Event::Decl(_) | Event::Comment(_) => continue,
                Event::DocType(_) => return Err(self.error(DecodeErrorKind::DocType)),
                Event::PI(_) => {
                    return Err(self.error(DecodeErrorKind::Unexpected("a processing instruction")));
                }
                Event::CData(_) => return Err(self.error(DecodeErrorKind::Unexpected("a CDATA section"))),
            }
        }
    }

    /// Skips whitespace between elements; any other text is an error.
    pub(crate) fn next_structural(&mut self) -> Result<Item<'a>, DecodeError> {
        loop {
            match self.next()? {
                Item::Text(t) if t.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) => continue,
                Item::Text(t) => {
                    // Point at the stray text itself, not the whitespace before it.
                    self.event_start += t.len() - t.trim_start().len();
                    return Err(self.error(DecodeErrorKind::Unexpected("text outside a field")));
                }
                other => return Ok(other),
            }
        }
    }

    fn count_element(&mut self) -> Result<(), DecodeError> {
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(self.error(DecodeErrorKind::TooManyElements { limit: self.limits.max_elements }));
        }
        Ok(())
    }

    /// Reads the attributes of an element into (name, value) pairs, borrowed
    /// from the element where no unescaping is needed.
    pub(crate) fn attributes<'e>(&self, e: &'e BytesStart<'a>) -> Result<Attrs<'e>, DecodeError> {
        let mut out = Vec::with_capacity(6);
        for (i, attr) in e.attributes().enumerate() {
            // Each attribute is checked against the ones before it (no
            // duplicates): bounded here, or 100,000 of them take minutes.
            if i >= MAX_ATTRIBUTES {
                return Err(self.error(DecodeErrorKind::TooManyAttributes { limit: MAX_ATTRIBUTES }));
            }
            let attr = attr.map_err(|err| self.error(DecodeErrorKind::Xml(err.to_string())))?;
            // The input is checked UTF-8 and names are split at ASCII bytes.
            let key = std::str::from_utf8(attr.key.into_inner())
                .map_err(|err| self.error(DecodeErrorKind::Xml(err.to_string())))?;
            let value = match attr.value {
                Cow::Borrowed(raw) => {
                    let raw = std::str::from_utf8(raw)
                        .map_err(|err| self.error(DecodeErrorKind::Xml(err.to_string())))?;
                    quick_xml::escape::unescape(raw)
                        .map_err(|err| self.error(DecodeErrorKind::Xml(err.to_string())))?
                }
                Cow::Owned(_) => Cow::Owned(
                    attr.unescape_value()
                        .map_err(|err| self.error(DecodeErrorKind::Xml(err.to_string())))?
                        .into_owned(),
                ),
            };
            out.push((key, value));
        }
        Ok(out)
    }

    /// Expects the end of the document (only whitespace and comments left).
    pub(crate) fn expect_eof(&mut self) -> Result<(), DecodeError> {
        match self.next_structural()? {
            Item::Eof => Ok(()),
            _ => Err(self.error(DecodeErrorKind::Unexpected("content after the root element"))),
        }
    }
}

pub(crate) fn element_name(e: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(e.name().as_ref()).into_owned()
}

/// Whether an element is named `name` (no allocation).
pub(crate) fn is_named(e: &BytesStart<'_>, name: &str) -> bool {
    e.name().as_ref() == name.as_bytes()
}

/// An element's attributes: (name, value) pairs.
pub(crate) type Attrs<'e> = Vec<(&'e str, Cow<'e, str>)>;

/// Finds a required attribute.
pub(crate) fn required<'v>(
    reader: &XmlReader<'_>,
    attrs: &'v [(impl AsRef<str>, impl AsRef<str>)],
    element: &'static str,
    name: &'static str,
) -> Result<&'v str, DecodeError> {
    optional(attrs, name)
        .ok_or_else(|| reader.error(DecodeErrorKind::MissingAttribute { element, attribute: name }))
}

pub(crate) fn optional<'v>(attrs: &'v [(impl AsRef<str>, impl AsRef<str>)], name: &str) -> Option<&'v str> {
    attrs.iter().find(|(k, _)| k.as_ref() == name).map(|(_, v)| v.as_ref())
}

/// The opened root element of a sealed clinicsync file.
pub(crate) struct Root<'a> {
    pub(crate) reader: XmlReader<'a>,
    pub(crate) attrs: Vec<(String, String)>,
    /// True for `<root/>`: there is nothing more to read but the end.
    pub(crate) empty: bool,
}

/// Checks a file's trailer, then reads its root element: it must be
/// `expected`, with `format` equal to `supported`.
pub(crate) fn open_root<'a>(
    file: &'a [u8],
    limits: Limits,
    expected: &'static str,
    supported: u32,
) -> Result<Root<'a>, DecodeError> {
    let body = super::trailer::unseal(file).map_err(|e| DecodeError::new(None, e.into()))?;
    let mut reader = XmlReader::new(body, limits)?;
    let (root, empty) = match reader.next_structural()? {
        Item::Start(e) => (e, false),
        Item::Empty(e) => (e, true),
        _ => return Err(reader.error(DecodeErrorKind::WrongElement { expected, found: "nothing".into() })),
    };
    let name = element_name(&root);
    if name != expected {
        return Err(reader.error(DecodeErrorKind::WrongElement { expected, found: name }));
    }
    let attrs: Vec<(String, String)> =
        reader.attributes(&root)?.into_iter().map(|(k, v)| (k.to_owned(), v.into_owned())).collect();
    let format = optional(&attrs, "format").ok_or_else(|| {
        reader.error(DecodeErrorKind::MissingAttribute { element: "root", attribute: "format" })
    })?;
    if format != supported.to_string() {
        return Err(reader.error(DecodeErrorKind::UnsupportedFormat { found: format.to_owned(), supported }));
    }
    Ok(Root { reader, attrs, empty })
}
