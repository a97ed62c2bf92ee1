//! Conversions between the model's `Value` and SQLite's values. SQLite's
//! dynamic typing keeps the storage class, so a value round-trips exactly.

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};

use crate::model::Value;

pub(crate) fn from_ref(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        // SQLite can hold text that is not UTF-8; it is replicated as the
        // closest valid text rather than refused.
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Borrows a model value as an SQL parameter.
pub(crate) struct Sql<'a>(pub(crate) &'a Value);

impl ToSql for Sql<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}
