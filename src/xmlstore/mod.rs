//! The folder's file formats: the patient file, the family manifest and the
//! site files, each sealed with an integrity trailer. Pure codecs: bytes in,
//! values out, no I/O.

mod digest;
mod error;
mod meta;
mod patient;
mod reader;
mod segment;
mod text;
mod trailer;

pub(crate) use digest::RowsDigest;
pub use error::{DecodeError, DecodeErrorKind};
pub use meta::{
    FOLDER_FORMAT, Manifest, PurgedKey, SiteFile, decode_manifest, decode_site, encode_manifest, encode_site,
    format_time,
};
pub use patient::{PATIENT_FORMAT, decode_patient, encode_patient};
pub(crate) use patient::{PatientWriter, RowSource, ValueRef, VersionRef};
pub use reader::Limits;
pub use segment::{Segment, decode_segment, encode_segment};
pub use text::is_xml_safe;
pub use trailer::{TrailerError, seal, unseal};
