//! Per-site settings, stored in the database (`_cs_meta`, keys
//! `setting.<name>`; the folder under its own key): shown and changed by
//! `clinicsync settings` and the web page's Settings form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::EngineError;
use crate::db::Db;
use crate::folder::layout::MANIFEST;
use crate::model::FamilyId;
use crate::xmlstore::decode_manifest;

/// The settings a run uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Read other sites' change-logs (on) or scan every patient file each
    /// run (off: slow; for recovery and as a benchmark baseline).
    pub use_logs: bool,
    /// Own segments younger than this are kept even when every site has them.
    pub log_retention: Duration,
    /// How long the patient history keeps a replaced value.
    pub history_retention: Duration,
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
    /// `clinicsync run` syncs every `sync_interval` (on), or only when
    /// asked and when files arrive (off).
    pub auto_sync: bool,
    pub sync_interval: Duration,
    /// `clinicsync run` syncs within seconds of files arriving and of the
    /// app changing rows (on), or only on the interval and Sync Now (off).
    pub watch: bool,
    /// The port of the local web page (on 127.0.0.1 only).
    pub web_port: u16,
    /// Alert when no sync has succeeded for this long.
    pub alert_after: Duration,
    /// Run this shell command on an alert (empty: none).
    pub alert_command: String,
    /// POST the alert as JSON to this URL (empty: none).
    pub alert_url: String,
    /// The app's local documents folder, whose files travel with the rows
    /// of the documents table (`None`: documents' files do not travel).
    pub documents_folder: Option<PathBuf>,
}

/// The setting that is not stored as `setting.<key>`: the folder is part of
/// the site's configuration.
pub(super) const FOLDER: &str = "folder";
/// The setting naming the local documents folder.
pub(crate) const DOCUMENTS_FOLDER: &str = "documents_folder";

/// What kind of value a setting holds: how it is checked when set and
/// read when loaded. Every setting has one; there is no default arm.
#[derive(Clone, Copy)]
enum Kind {
    /// The sync folder (checked against the family's manifest).
    Folder,
    /// The local documents folder: empty, or an existing folder outside
    /// the sync folder.
    Documents,
    /// `on` or `off`.
    Switch,
    /// A duration, with the shortest value that keeps the rules safe and why.
    Duration(Option<(Duration, &'static str)>),
    /// The service's interval: a bare number is minutes; 10s to 24h.
    Interval,
    /// A whole percentage from 0 to 100.
    Percent,
    /// A whole number.
    Count,
    /// A TCP port from 1 to 65535.
    Port,
    /// A shell command, or empty.
    Command,
    /// An http(s) URL, or empty.
    Url,
}

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

struct Spec {
    key: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
    /// The setting's name on the page, in plain words.
    label: &'static str,
    /// One plain sentence for the page.
    words: &'static str,
    /// Shown first on the page; the rest are under Advanced.
    basic: bool,
}

const SPECS: &[Spec] = &[
    Spec {
        key: FOLDER,
        kind: Kind::Folder,
        default: "",
        help: "the folder the cloud client carries (must hold this family's clinicsync.xml)",
        label: "Sync folder",
        words: "The folder your cloud service (Dropbox, OneDrive, Google Drive, Syncthing, Nextcloud) keeps in step between your computers.",
        basic: true,
    },
    Spec {
        key: DOCUMENTS_FOLDER,
        kind: Kind::Documents,
        default: "",
        help: "the app's documents folder: files of the documents table travel with their rows (empty: they do not)",
        label: "Documents folder",
        words: "Where your practice software keeps patients' documents; leave empty if document files should not travel.",
        basic: false,
    },
    Spec {
        key: "auto_sync",
        kind: Kind::Switch,
        default: "on",
        help: "`clinicsync run` syncs every sync_interval (on/off)",
        label: "Automatically sync while clinicsync runs",
        words: "Syncs on its own at the interval below (changes are also synced as they happen while \"Sync as soon as something changes\" is on).",
        basic: true,
    },
    Spec {
        key: "sync_interval",
        kind: Kind::Interval,
        default: "5m",
        help: "how often `clinicsync run` syncs (a bare number is minutes)",
        label: "Automatically sync every",
        words: "How often, in minutes (or with a unit: 30s, 1h).",
        basic: true,
    },
    Spec {
        key: "watch",
        kind: Kind::Switch,
        default: "on",
        help: "`clinicsync run` syncs within seconds of files arriving or the app changing rows (on/off; off for folders where file events do not work)",
        label: "Sync as soon as something changes",
        words: "Syncs within seconds of changes arriving or being made here; turn off only if your folder does not report changes.",
        basic: false,
    },
    Spec {
        key: "use_logs",
        kind: Kind::Switch,
        default: "on",
        help: "read other sites' change-logs instead of scanning every patient file (on/off)",
        label: "Use logs for faster sync",
        words: "Reads what each computer changed instead of every patient file; leave on unless support asks.",
        basic: true,
    },
    Spec {
        key: "log_retention",
        kind: Kind::Duration(Some((
            DAY,
            "a deletion waits at least this long before it is purged, and the change-log is kept for sites whose cloud client delivers late",
        ))),
        default: "7days",
        help: "keep own change-log segments, and deletions before they are purged, at least this long (1day at least)",
        label: "Keep change history for",
        words: "How long deletions and each computer's change history are kept before they are cleaned up.",
        basic: false,
    },
    Spec {
        key: "history_retention",
        kind: Kind::Duration(Some((
            DAY,
            "the history is what a person looks at to see who changed a patient's data; less than a day would lose what a weekend's review needs",
        ))),
        default: "7years",
        help: "keep each replaced value in the patient history at least this long (7years: the common retention of medical records)",
        label: "Keep patient history for",
        words: "How long the record of who changed what in each patient's data is kept (medical records are commonly kept 7 years).",
        basic: false,
    },
    Spec {
        key: "dormancy",
        kind: Kind::Duration(Some((
            Duration::from_secs(7 * 24 * 3600),
            "a site away for less (a week's holiday, a laptop on home visits) would count as gone, and the others would purge deletions it has not seen yet",
        ))),
        default: "30days",
        help: "sites not seen for this long stop holding back log compaction and purging (7days at least)",
        label: "Treat a computer as away after",
        words: "A computer not seen for this long no longer holds back clean-up at the others.",
        basic: false,
    },
    Spec {
        key: "max_clock_skew",
        kind: Kind::Duration(Some((
            MINUTE,
            "computers' clocks differ by seconds even when they are set right, and less would hold back their changes",
        ))),
        default: "1h",
        help: "hold back changes stamped further ahead of this computer's clock (1min at least)",
        label: "Hold back changes from a clock ahead by more than",
        words: "Changes stamped further ahead of this computer's clock wait until the clocks agree.",
        basic: false,
    },
    Spec {
        key: "full_scan_interval",
        kind: Kind::Duration(Some((
            MINUTE,
            "a full scan reads every patient file; to read them on every run, set use_logs=off",
        ))),
        default: "1h",
        help: "with logs on, scan every patient file at least this often (1min at least)",
        label: "Read every patient file at least every",
        words: "A slower, thorough check that catches anything the change history missed.",
        basic: false,
    },
    Spec {
        key: "auto_delete_conflicts",
        kind: Kind::Switch,
        default: "on",
        help: "delete a cloud client's conflict copy once it is merged (on/off)",
        label: "Automatically delete conflicts",
        words: "Deletes the conflicted copies your cloud service makes once their changes are merged.",
        basic: true,
    },
    Spec {
        key: "mass_delete_percent",
        kind: Kind::Percent,
        default: "10",
        help: "incoming deletions of more than this % of the patients (or of one table's rows) wait for `sync --confirm-deletes` or `--keep-deleted`",
        label: "Ask before deleting more than (%)",
        words: "When another computer deletes more than this share of the patients at once, you decide first.",
        basic: false,
    },
    Spec {
        key: "mass_delete_min_patients",
        kind: Kind::Count,
        default: "20",
        help: "...but never fewer than this many patients (or rows)",
        label: "...and more than (patients)",
        words: "A few deletions at once never need asking.",
        basic: false,
    },
    Spec {
        key: "web_port",
        kind: Kind::Port,
        default: "8750",
        help: "port of the local web page (127.0.0.1 only)",
        label: "Web page port",
        words: "The port of this page on this computer; changes when clinicsync restarts.",
        basic: false,
    },
    Spec {
        key: "alert_after",
        kind: Kind::Duration(None),
        default: "1h",
        help: "alert when no sync has succeeded for this long",
        label: "Alert when not synced for",
        words: "Raises an alert when no sync has succeeded for this long.",
        basic: false,
    },
    Spec {
        key: "alert_command",
        kind: Kind::Command,
        default: "",
        help: "shell command run on an alert; the reason is in $CLINICSYNC_ALERT (empty: none)",
        label: "Alert command",
        words: "A command run on each alert (for IT staff); empty for none.",
        basic: false,
    },
    Spec {
        key: "alert_url",
        kind: Kind::Url,
        default: "",
        help: "http(s) URL that receives each alert as a JSON POST (empty: none)",
        label: "Alert web address",
        words: "An address that receives each alert (for IT staff); empty for none.",
        basic: false,
    },
];

fn spec(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.key == key)
}

/// One setting as `clinicsync settings` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SettingView {
    pub key: &'static str,
    pub value: String,
    pub default: &'static str,
    pub help: &'static str,
    /// For the page: its name and one sentence in plain words, and
    /// whether it is among the first shown (the rest under Advanced).
    pub label: &'static str,
    pub words: &'static str,
    pub basic: bool,
}

/// Why a setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("there is no setting {key:?}; the settings are: {known}")]
    Unknown { key: String, known: String },
    #[error("{key} must be {expected}, not {value:?}")]
    Invalid { key: String, value: String, expected: &'static str },
    #[error("{key} must be at least {least}, not {value:?}: {why}")]
    TooShort { key: String, value: String, least: String, why: &'static str },
    #[error("settings are written as KEY=VALUE, not {0:?}")]
    Syntax(String),
    #[error("folder {path}: {reason}")]
    Folder { path: String, reason: String },
    #[error("documents folder {path}: {reason}")]
    Documents { path: String, reason: String },
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// A value as it is stored, or why `spec` refuses it.
fn validate(spec: &Spec, value: &str) -> Result<String, SettingError> {
    let key = spec.key;
    let invalid = |expected| SettingError::Invalid { key: key.to_owned(), value: value.to_owned(), expected };
    match spec.kind {
        Kind::Folder | Kind::Documents => Ok(value.to_owned()),
        Kind::Percent => value
            .trim_end_matches('%')
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .map(|p| p.to_string())
            .ok_or_else(|| invalid("a whole percentage from 0 to 100")),
        Kind::Count => {
            value.parse::<u64>().map(|n| n.to_string()).map_err(|_| invalid("a whole number of patients"))
        }
        Kind::Port => value
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1)
            .map(|p| p.to_string())
            .ok_or_else(|| invalid("a port number from 1 to 65535")),
        Kind::Interval => {
            let d = match value.parse::<u64>() {
                Ok(minutes) => Some(Duration::from_secs(minutes.saturating_mul(60))),
                Err(_) => humantime::parse_duration(value).ok(),
            };
            d.filter(|d| *d >= Duration::from_secs(10) && *d <= DAY)
                .map(|d| humantime::format_duration(d).to_string())
                .ok_or_else(|| invalid("a number of minutes, or a duration from 10s to 24h such as 5m"))
        }
        Kind::Command => Ok(value.to_owned()),
        Kind::Url => {
            let ok = value.is_empty()
                || ((value.starts_with("http://") || value.starts_with("https://"))
                    && !value.contains(char::is_whitespace));
            if ok { Ok(value.to_owned()) } else { Err(invalid("empty, or an http:// or https:// URL")) }
        }
        Kind::Switch => parse_bool(value)
            .map(|b| if b { "on" } else { "off" }.to_owned())
            .ok_or_else(|| invalid("on or off")),
        Kind::Duration(minimum) => {
            let d = humantime::parse_duration(value)
                .map_err(|_| invalid("a duration such as 30s, 15min, 12h or 7days"))?;
            if let Some((least, why)) = minimum
                && d < least
            {
                return Err(SettingError::TooShort {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    least: humantime::format_duration(least).to_string(),
                    why,
                });
            }
            Ok(humantime::format_duration(d).to_string())
        }
    }
}

fn stored(db: &Db, spec: &Spec) -> Result<String, EngineError> {
    if spec.key == FOLDER {
        return Ok(db.site_config()?.folder.display().to_string());
    }
    Ok(db.meta(&format!("setting.{}", spec.key))?.unwrap_or_else(|| spec.default.to_owned()))
}

/// Why `folder` cannot be this site's sync folder, if it cannot: it must
/// exist, be a writable directory, not hold the database (the cloud client
/// would carry the live database file), and hold `family`'s manifest (when
/// `family` is given).
pub(crate) fn check_folder(
    db_path: &Path,
    folder: &Path,
    family: Option<FamilyId>,
) -> Result<PathBuf, SettingError> {
    let shown = folder.display().to_string();
    let refuse = |reason: String| SettingError::Folder { path: shown.clone(), reason };
    if folder.as_os_str().is_empty() {
        return Err(refuse("no folder was given".into()));
    }
    let folder = std::path::absolute(folder).map_err(|e| refuse(format!("cannot be resolved: {e}")))?;
    if let Some(why) = crate::platform::unusable_path(&folder) {
        return Err(refuse(format!("cannot be used: {why}")));
    }
    let meta = match std::fs::metadata(&folder) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(
                "does not exist (is the cloud client's drive mounted? create the folder or pick another)"
                    .into(),
            ));
        }
        Err(e) => return Err(refuse(format!("cannot be reached: {e}"))),
    };
    if !meta.is_dir() {
        return Err(refuse("is a file, not a folder".into()));
    }
    if !crate::platform::dir_writable(&folder) {
        return Err(refuse("is not writable by this user".into()));
    }
    // Compared without links where the system can resolve them (Wine
    // cannot for a path beyond 260 characters), else as given.
    let real_folder = folder.canonicalize().unwrap_or_else(|_| folder.clone());
    let db_abs = std::path::absolute(db_path).unwrap_or_else(|_| db_path.to_path_buf());
    let db_dir = db_abs.parent().map(Path::to_path_buf).unwrap_or_default();
    let real_db_dir = db_dir.canonicalize().unwrap_or(db_dir);
    if real_db_dir.starts_with(&real_folder) {
        return Err(refuse(
            "holds the database itself: the cloud client would copy the live database file between computers and damage it; keep the database outside the synced folder".into(),
        ));
    }
    if let Some(family) = family {
        // Read as every file of the folder is: a FIFO or a link there must
        // not hang or lead elsewhere.
        let bytes = crate::folder::DiskFolder::new(folder.clone(), None).read(MANIFEST, 1 << 20).map_err(|_| {
            refuse("holds no clinicsync.xml: it is not this family's folder (or the cloud client has not downloaded it yet)".into())
        })?;
        let found =
            decode_manifest(&bytes).map_err(|e| refuse(format!("its clinicsync.xml cannot be used: {e}")))?;
        if found.family != family {
            return Err(refuse(format!(
                "belongs to family {}, but this database syncs with family {}: it is not this family's folder",
                found.family.short(),
                family.short()
            )));
        }
    }
    Ok(folder)
}

/// The documents folder as stored (`None` for empty), or why `folder`
/// cannot be it: it must be an existing, writable folder, and neither
/// inside the sync folder nor holding it (the cloud client would carry
/// every document under its own name, and the trash with it).
pub(crate) fn check_documents_folder(
    folder: &Path,
    sync_folder: &Path,
) -> Result<Option<PathBuf>, SettingError> {
    if folder.as_os_str().is_empty() {
        return Ok(None);
    }
    let shown = folder.display().to_string();
    let refuse = |reason: String| SettingError::Documents { path: shown.clone(), reason };
    let folder = std::path::absolute(folder).map_err(|e| refuse(format!("cannot be resolved: {e}")))?;
    if let Some(why) = crate::platform::unusable_path(&folder) {
        return Err(refuse(format!("cannot be used: {why}")));
    }
    match std::fs::metadata(&folder) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(refuse("is a file, not a folder".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(
                "does not exist (create it, or give the folder the app keeps its documents in)".into(),
            ));
        }
        Err(e) => return Err(refuse(format!("cannot be reached: {e}"))),
    }
    if !crate::platform::dir_writable(&folder) {
        return Err(refuse("is not writable by this user".into()));
    }
    let real = folder.canonicalize().unwrap_or_else(|_| folder.clone());
    let real_sync = sync_folder.canonicalize().unwrap_or_else(|_| sync_folder.to_path_buf());
    if real.starts_with(&real_sync) || real_sync.starts_with(&real) {
        return Err(refuse(
            "overlaps the sync folder: documents travel through the sync folder's docs/ by their checksums, so the documents folder must lie outside it (and not hold it)".into(),
        ));
    }
    Ok(Some(folder))
}

pub(super) fn load(db: &Db) -> Result<Settings, EngineError> {
    // Each value is read as its kind; a stored value that does not parse
    // (a hand edit) counts as the default, and a duration stored before its
    // minimum existed counts as the minimum.
    let get = |key: &str| -> Result<(String, &'static Spec), EngineError> {
        let spec = spec(key).expect("a known setting");
        Ok((stored(db, spec)?, spec))
    };
    let switch = |key: &str| -> Result<bool, EngineError> {
        let (text, spec) = get(key)?;
        debug_assert!(matches!(spec.kind, Kind::Switch), "{key} is not a switch");
        Ok(parse_bool(&text).or_else(|| parse_bool(spec.default)).expect("defaults parse"))
    };
    let duration = |key: &str| -> Result<Duration, EngineError> {
        let (text, spec) = get(key)?;
        let d = humantime::parse_duration(&text)
            .unwrap_or_else(|_| humantime::parse_duration(spec.default).expect("defaults parse"));
        Ok(match spec.kind {
            Kind::Duration(Some((least, _))) => d.max(least),
            Kind::Duration(None) | Kind::Interval => d,
            _ => unreachable!("{key} is not a duration"),
        })
    };
    fn number<T: std::str::FromStr>(text: &str, spec: &Spec) -> T {
        text.parse().unwrap_or_else(|_| spec.default.parse().ok().expect("defaults parse"))
    }
    let (percent, percent_spec) = get("mass_delete_percent")?;
    let (min_patients, min_spec) = get("mass_delete_min_patients")?;
    let (port, port_spec) = get("web_port")?;
    Ok(Settings {
        use_logs: switch("use_logs")?,
        log_retention: duration("log_retention")?,
        history_retention: duration("history_retention")?,
        dormancy: duration("dormancy")?,
        max_clock_skew: duration("max_clock_skew")?,
        full_scan_interval: duration("full_scan_interval")?,
        auto_delete_conflicts: switch("auto_delete_conflicts")?,
        mass_delete_percent: number(percent.trim_end_matches('%'), percent_spec),
        mass_delete_min_patients: number(&min_patients, min_spec),
        auto_sync: switch("auto_sync")?,
        sync_interval: duration("sync_interval")?,
        watch: switch("watch")?,
        web_port: number(&port, port_spec),
        alert_after: duration("alert_after")?,
        alert_command: get("alert_command")?.0,
        alert_url: get("alert_url")?.0,
        documents_folder: Some(get(DOCUMENTS_FOLDER)?.0).filter(|f| !f.is_empty()).map(PathBuf::from),
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
                label: spec.label,
                words: spec.words,
                basic: spec.basic,
            })
        })
        .collect()
}

/// Applies `KEY=VALUE` assignments, all or none.
pub(super) fn set(db: &Db, assignments: &[String]) -> Result<(), EngineError> {
    let mut parsed = Vec::new();
    let mut new_folder = None;
    for a in assignments {
        let (key, value) = a.split_once('=').ok_or_else(|| SettingError::Syntax(a.clone()))?;
        let (key, value) = (key.trim(), value.trim());
        let Some(spec) = spec(key) else {
            let known = SPECS.iter().map(|s| s.key).collect::<Vec<_>>().join(", ");
            return Err(SettingError::Unknown { key: key.to_owned(), known }.into());
        };
        if let Kind::Folder = spec.kind {
            let family = db.site_config()?.family;
            new_folder = Some(check_folder(db.path(), Path::new(value), Some(family))?);
            continue;
        }
        if let Kind::Documents = spec.kind {
            let sync_folder = db.site_config()?.folder;
            let checked = check_documents_folder(Path::new(value), &sync_folder)?;
            parsed.push((key.to_owned(), checked.map(|p| p.display().to_string()).unwrap_or_default()));
            continue;
        }
        parsed.push((key.to_owned(), validate(spec, value)?));
    }
    for (key, value) in parsed {
        db.set_meta(&format!("setting.{key}"), &value)?;
    }
    if let Some(folder) = new_folder {
        db.set_meta(FOLDER, &folder.display().to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_a_valid_value_of_its_kind_and_loads() {
        for spec in SPECS.iter().filter(|s| !matches!(s.kind, Kind::Folder | Kind::Documents)) {
            let stored = validate(spec, spec.default).unwrap_or_else(|e| panic!("{}: {e}", spec.key));
            assert_eq!(validate(spec, &stored).unwrap(), stored, "{} stores a value it accepts", spec.key);
        }
        let dir = tempfile::tempdir().unwrap();
        let settings = load(&Db::init_for_test(dir.path(), None)).unwrap();
        assert_eq!(
            (settings.sync_interval, settings.web_port, settings.mass_delete_percent),
            (5 * MINUTE, 8750, 10)
        );
    }

    #[test]
    fn a_value_stored_below_its_minimum_counts_as_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::init_for_test(dir.path(), None);
        // As an older clinicsync, which had no minimums, may have stored them.
        for (key, value) in [("dormancy", "2s"), ("log_retention", "0s"), ("full_scan_interval", "0s")] {
            db.set_meta(&format!("setting.{key}"), value).unwrap();
        }
        let settings = load(&db).unwrap();
        assert_eq!(settings.dormancy, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(settings.log_retention, Duration::from_secs(24 * 3600));
        assert_eq!(settings.full_scan_interval, Duration::from_secs(60));
        assert_eq!(settings.max_clock_skew, Duration::from_secs(3600), "the default is untouched");
    }
}
