//! The errors of reading a folder file: what is wrong, and on which line.

use std::fmt;

use super::trailer::TrailerError;

/// A file that could not be read, with the line where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    pub line: Option<usize>,
    #[source]
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    pub(crate) fn new(line: Option<usize>, kind: DecodeErrorKind) -> Self {
        DecodeError { line, kind }
    }

    /// True when the file may be whole next time (the cloud client is still
    /// writing it); false when its content itself is unusable.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, DecodeErrorKind::Trailer(TrailerError::Missing | TrailerError::Length { .. }))
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// What is wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("{0}")]
    Trailer(#[from] TrailerError),
    #[error("it is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("it is not UTF-8 text")]
    NotUtf8,
    #[error("it is not an XML document (it does not begin with an element)")]
    NotXml,
    #[error("it is not well-formed XML: {0}")]
    Xml(String),
    #[error("it contains a document type declaration, which clinicsync never writes and does not read")]
    DocType,
    #[error("it contains {0}, which clinicsync never writes")]
    Unexpected(&'static str),
    #[error("it nests elements too deeply")]
    TooDeep,
    #[error("it has more than {limit} elements")]
    TooManyElements { limit: usize },
    #[error("it has more than {limit} rows")]
    TooManyRows { limit: usize },
    #[error("an element has more than {limit} attributes, which clinicsync never writes")]
    TooManyAttributes { limit: usize },
    #[error("a text is longer than the {limit}-byte limit")]
    TextTooLong { limit: usize },
    #[error("expected <{expected}> but found <{found}>")]
    WrongElement { expected: &'static str, found: String },
    #[error("<{element}> lacks the attribute {attribute}")]
    MissingAttribute { element: &'static str, attribute: &'static str },
    #[error("attribute {attribute}={} is invalid: {reason}", shortened(value))]
    BadAttribute { attribute: &'static str, value: String, reason: String },
    #[error(
        "it is format version {found}, newer than this clinicsync reads (version {supported}); upgrade clinicsync on this computer"
    )]
    UnsupportedFormat { found: String, supported: u32 },
    #[error("field {column} {reason}")]
    BadField { column: String, reason: String },
    #[error("a field of type {class} is invalid: {reason}")]
    BadValue { class: &'static str, reason: String },
    #[error("the row {table}/{pk} appears twice")]
    DuplicateRow { table: String, pk: String },
}

/// A value from a file as a sentence quotes it: at most 80 characters, so
/// a hostile file cannot make a log line of megabytes.
fn shortened(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}
