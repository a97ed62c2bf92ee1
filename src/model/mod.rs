//! The pure data model: clocks, values, versions, rows, patient documents and
//! their join. Nothing here touches the file system, a database, the wall
//! clock or a random number generator; time and randomness come in as values.

mod body;
mod doc;
mod hlc;
mod ids;
mod text;
mod value;

pub use body::{BODY_FIELD, Body, body_at, body_path, same_file_key};
pub use doc::{Base, FieldState, FieldVersion, InvalidVersion, PatientDoc, RowKey, RowState, push_stamps};
pub use hlc::{Clock, Hlc, HlcClock, HlcParseError};
pub use ids::{
    FamilyId, IdParseError, PatientId, SiteId, patient_file_name, shard_of, short_id, write_hex_bytes,
};
pub use text::shown;
pub use value::Value;
