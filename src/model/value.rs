//! A value in one of SQLite's five storage classes, compared exactly: reals
//! by their bits (so -0.0 and 0.0 differ, as they do on disk), text by its
//! bytes.

use std::cmp::Ordering;

/// A column value, exactly as SQLite stores it.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn class_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Integer(_) => 1,
            Value::Real(_) => 2,
            Value::Text(_) => 3,
            Value::Blob(_) => 4,
        }
    }

    /// The storage class name used in files and messages.
    pub fn class_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "int",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }

    /// The text, when this is a text value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The whole value for people (a conflict's two values, side by side).
    pub fn display_full(&self) -> String {
        match self {
            Value::Text(t) => t.clone(),
            other => other.display_short(),
        }
    }

    /// A short rendering for people (logs, conflict listings).
    pub fn display_short(&self) -> String {
        const MAX: usize = 80;
        match self {
            Value::Null => "(empty)".to_owned(),
            Value::Integer(i) => i.to_string(),
            Value::Real(r) => r.to_string(),
            Value::Text(t) if t.chars().count() > MAX => {
                let cut: String = t.chars().take(MAX).collect();
                format!("{cut}…")
            }
            Value::Text(t) => t.clone(),
            Value::Blob(b) => format!("({} bytes)", b.len()),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Integer(a), Value::Integer(b)) => a.cmp(b),
            // total_cmp orders by bit pattern, so it is a total order in
            // which -0.0 != 0.0 and NaNs with different payloads differ.
            (Value::Real(a), Value::Real(b)) => a.total_cmp(b),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Blob(a), Value::Blob(b)) => a.cmp(b),
            _ => self.class_rank().cmp(&other.class_rank()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reals_compare_by_bits() {
        assert_ne!(Value::Real(0.0), Value::Real(-0.0));
        assert_eq!(Value::Real(f64::INFINITY), Value::Real(f64::INFINITY));
        assert_ne!(Value::Integer(1), Value::Real(1.0));
    }
}
