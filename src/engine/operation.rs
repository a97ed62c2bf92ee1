//! The operations in Latest Logs: `verify` and `baseline download|upload`
//! are each recorded as a run of their own (trigger `operation NAME`), with
//! one sentence of what they did and an event per file or table they
//! changed or found wrong. They are not syncs: neither the last sync's
//! time nor its outcome counts them. (`detach` and `family delete` remove
//! the tables Latest Logs is kept in; the sync each starts with is there.)

use std::path::Path;

use super::EngineError;
use super::host::SystemClock;
use super::report::Outcome;
use crate::db::{Db, EventRecord};
use crate::model::Clock;

/// The trigger of an operation's record.
pub fn operation_trigger(name: &str) -> String {
    format!("{}{name}", crate::db::OPERATION_PREFIX)
}

/// The operation of a record's trigger.
pub fn trigger_operation(trigger: &str) -> Option<&str> {
    trigger.strip_prefix(crate::db::OPERATION_PREFIX)
}

/// What an operation did, for its record.
pub(crate) struct Done {
    pub(crate) outcome: Outcome,
    /// One sentence: what changed.
    pub(crate) sentence: String,
    /// (level, path, message): `info`, `warning` or `error`.
    pub(crate) events: Vec<(&'static str, Option<String>, String)>,
}

/// Runs `op` and records it in Latest Logs, a failure with its error. The
/// operation's own result is returned whatever recording it does (a record
/// that cannot be written is logged, not made the operation's failure).
pub(crate) fn recorded<T>(
    db_path: &Path,
    name: &str,
    op: impl FnOnce() -> Result<T, EngineError>,
    done: impl FnOnce(&T) -> Done,
) -> Result<T, EngineError> {
    let started_ms = SystemClock.now_ms();
    let result = op();
    let record = match &result {
        Ok(value) => done(value),
        Err(e) => Done { outcome: Outcome::Failed, sentence: e.to_string(), events: Vec::new() },
    };
    if let Err(e) = record_in(db_path, name, started_ms, record) {
        tracing::warn!("the {name} operation could not be recorded in Latest Logs: {e}");
    }
    result
}

fn record_in(db_path: &Path, name: &str, started_ms: u64, done: Done) -> Result<(), EngineError> {
    let mut db = Db::open(db_path)?;
    let ended_ms = SystemClock.now_ms();
    let id = db.begin_run(&operation_trigger(name), started_ms)?;
    let mut events: Vec<EventRecord> = done
        .events
        .into_iter()
        .map(|(level, path, message)| EventRecord {
            at_ms: ended_ms,
            level: level.to_owned(),
            kind: "operation".to_owned(),
            path,
            message,
        })
        .collect();
    if done.outcome == Outcome::Failed {
        events.insert(
            0,
            EventRecord {
                at_ms: ended_ms,
                level: "error".into(),
                kind: "failed".into(),
                path: None,
                message: done.sentence.clone(),
            },
        );
    }
    let summary = serde_json::json!({ "operation": name, "said": done.sentence });
    db.finish_run(id, ended_ms, done.outcome.as_str(), &summary, &events)?;
    Ok(())
}
