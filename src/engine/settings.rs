//! Per-site settings, stored in the database (`_cs_meta`, keys
//! `setting.<name>`): shown and changed by `clinicsync settings`.

use std::time::Duration;

use serde::Serialize;

use super::EngineError;
use crate::db::Db;

/// The settings a run uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Read other sites' change-logs (on) or scan every patient file each
    /// run (off: slow; for recovery and as a benchmark baseline).
    pub use_logs: bool,
    /// Own segments younger than this are kept even when every site has them.
    pub log_retention: Duration,
    /// Sites not seen for this long no longer hold compaction back.
    pub dormancy: Duration,
    /// Stamps further ahead of this computer's clock are held back.
    pub max_clock_skew: Duration,
    /// With logs on, scan every patient file at least this often (picks up
    /// conflict copies and files a cloud client overwrote).
    pub full_scan_interval: Duration,
    /// Delete a conflict copy once it is merged into the original (on), or
    /// keep it and remember it as merged (off).
    pub auto_delete_conflicts: bool,
    /// Incoming deletions of more than this share of the patients wait for
    /// confirmation...
    pub mass_delete_percent: u8,
    /// ...and of more than this many patients.
    pub mass_delete_min_patients: u64,
}

struct Spec {
    key: &'static str,
    default: &'static str,
    help: &'static str,
}

const SPECS: &[Spec] = &[
    Spec {
        key: "use_logs",
        default: "on",
        help: "read other sites' change-logs instead of scanning every patient file (on/off)",
    },
    Spec { key: "log_retention", default: "7days", help: "keep own change-log segments at least this long" },
    Spec {
        key: "dormancy",
        default: "30days",
        help: "sites not seen for this long stop holding back log compaction",
    },
    Spec {
        key: "max_clock_skew",
        default: "1h",
        help: "hold back changes stamped further ahead of this computer's clock",
    },
    Spec {
        key: "full_scan_interval",
        default: "1h",
        help: "with logs on, scan every patient file at least this often",
    },
    Spec {
        key: "auto_delete_conflicts",
        default: "on",
        help: "delete a cloud client's conflict copy once it is merged (on/off)",
    },
    Spec {
        key: "mass_delete_percent",
        default: "10",
        help: "incoming deletions of more than this % of the patients wait for `sync --confirm-deletes`",
    },
    Spec {
        key: "mass_delete_min_patients",
        default: "20",
        help: "...but never fewer than this many patients",
    },
];

/// One setting as `clinicsync settings` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SettingView {
    pub key: &'static str,
    pub value: String,
    pub default: &'static str,
    pub help: &'static str,
}

/// Why a setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("there is no setting {key:?}; the settings are: {known}")]
    Unknown { key: String, known: String },
    #[error("{key} must be {expected}, not {value:?}")]
    Invalid { key: String, value: String, expected: &'static str },
    #[error("settings are written as KEY=VALUE, not {0:?}")]
    Syntax(String),
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn validate(key: &str, value: &str) -> Result<String, SettingError> {
    let invalid = |expected| SettingError::Invalid { key: key.to_owned(), value: value.to_owned(), expected };
    match key {
        "mass_delete_percent" => value
            .trim_end_matches('%')
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .map(|p| p.to_string())
            .ok_or_else(|| invalid("a whole percentage from 0 to 100")),
        "mass_delete_min_patients" => {
            value.parse::<u64>().map(|n| n.to_string()).map_err(|_| invalid("a whole number of patients"))
        }
        "use_logs" | "auto_delete_conflicts" => parse_bool(value)
            .map(|b| if b { "on" } else { "off" }.to_owned())
            .ok_or_else(|| invalid("on or off")),
        _ => humantime::parse_duration(value)
            .map(|d| humantime::format_duration(d).to_string())
            .map_err(|_| invalid("a duration such as 30s, 15min, 12h or 7days")),
    }
}

fn stored(db: &Db, spec: &Spec) -> Result<String, EngineError> {
    Ok(db.meta(&format!("setting.{}", spec.key))?.unwrap_or_else(|| spec.default.to_owned()))
}

pub(super) fn load(db: &Db) -> Result<Settings, EngineError> {
    let get = |key: &str| -> Result<String, EngineError> {
        let spec = SPECS.iter().find(|s| s.key == key).expect("a known setting");
        stored(db, spec)
    };
    let duration = |key: &str| -> Result<Duration, EngineError> {
        let text = get(key)?;
        Ok(humantime::parse_duration(&text).unwrap_or_else(|_| {
            let spec = SPECS.iter().find(|s| s.key == key).expect("a known setting");
            humantime::parse_duration(spec.default).expect("defaults parse")
        }))
    };
    Ok(Settings {
        use_logs: parse_bool(&get("use_logs")?).unwrap_or(true),
        log_retention: duration("log_retention")?,
        dormancy: duration("dormancy")?,
        max_clock_skew: duration("max_clock_skew")?,
        full_scan_interval: duration("full_scan_interval")?,
        auto_delete_conflicts: parse_bool(&get("auto_delete_conflicts")?).unwrap_or(true),
        mass_delete_percent: get("mass_delete_percent")?.parse().unwrap_or(10),
        mass_delete_min_patients: get("mass_delete_min_patients")?.parse().unwrap_or(20),
    })
}

pub(super) fn list(db: &Db) -> Result<Vec<SettingView>, EngineError> {
    SPECS
        .iter()
        .map(|spec| {
            Ok(SettingView {
                key: spec.key,
                value: stored(db, spec)?,
                default: spec.default,
                help: spec.help,
            })
        })
        .collect()
}

/// Applies `KEY=VALUE` assignments, all or none.
pub(super) fn set(db: &Db, assignments: &[String]) -> Result<(), EngineError> {
    let mut parsed = Vec::new();
    for a in assignments {
        let (key, value) = a.split_once('=').ok_or_else(|| SettingError::Syntax(a.clone()))?;
        let (key, value) = (key.trim(), value.trim());
        if !SPECS.iter().any(|s| s.key == key) {
            let known = SPECS.iter().map(|s| s.key).collect::<Vec<_>>().join(", ");
            return Err(SettingError::Unknown { key: key.to_owned(), known }.into());
        }
        parsed.push((key.to_owned(), validate(key, value)?));
    }
    for (key, value) in parsed {
        db.set_meta(&format!("setting.{key}"), &value)?;
    }
    Ok(())
}
