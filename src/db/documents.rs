//! The document files of the mapping's documents table: where each file
//! was when it was last in step with the state (`_cs_doc_files`), which
//! documents wait for their body or failed its check (`_cs_doc_due`), and
//! the files moved to the trash (`_cs_doc_trash`).

use rusqlite::{Connection, OptionalExtension, params};

use super::state::{Ctx, load_row};
use super::{Db, DbError};
use crate::model::{BODY_FIELD, Base, Body, RowKey, same_file_key};

pub(super) const TABLE: &str = "
-- Each document's local file as it was when last in step with the state:
-- its path under the documents folder, size, time and the body it holds.
-- `file` is the path as one file (model::same_file_key), to find two rows
-- that would share one.
CREATE TABLE IF NOT EXISTS _cs_doc_files (tbl TEXT NOT NULL, pk TEXT NOT NULL, path TEXT NOT NULL,
  file TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS _cs_doc_files_file ON _cs_doc_files (tbl, file);
-- Documents whose row came from elsewhere and whose file is not in step
-- yet: due (to look at), waiting (the body has not arrived), failed (a
-- copy failed its check), with what was said and since when.
CREATE TABLE IF NOT EXISTS _cs_doc_due (tbl TEXT NOT NULL, pk TEXT NOT NULL, state TEXT NOT NULL,
  said TEXT, since_ms INTEGER, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
-- Bodies this site wrote into the folder's docs/, and since when (and up to
-- which of its own exports) no version of any row has named them.
CREATE TABLE IF NOT EXISTS _cs_doc_bodies (sha TEXT PRIMARY KEY, unreferenced_ms INTEGER,
  unreferenced_head INTEGER) WITHOUT ROWID;
-- Files moved to the documents folder's trash: where to, from where, when.
CREATE TABLE IF NOT EXISTS _cs_doc_trash (trashed TEXT PRIMARY KEY, original TEXT NOT NULL,
  tbl TEXT NOT NULL, pk TEXT NOT NULL, at_ms INTEGER NOT NULL) WITHOUT ROWID;
";

/// A document's local file as it was when last in step with the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocFile {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub body: Body,
}

/// Where a document stands when its file is not in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DueState {
    Due,
    Waiting,
    Failed,
}

impl DueState {
    fn as_str(self) -> &'static str {
        match self {
            DueState::Due => "due",
            DueState::Waiting => "waiting",
            DueState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> DueState {
        match text {
            "waiting" => DueState::Waiting,
            "failed" => DueState::Failed,
            _ => DueState::Due,
        }
    }
}

/// A document whose file is not in step, as `clinicsync documents` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DueDocument {
    pub table: String,
    pub pk: String,
    pub state: DueState,
    pub said: Option<String>,
    pub since_ms: Option<u64>,
}

/// Since when (ms) and up to which own export nothing has named a body this
/// site wrote (`None`: something does).
pub type Unreferenced = Option<(u64, u64)>;

/// What the app's row of a document says of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentRow {
    pub path: Option<String>,
    pub sha256: Option<String>,
    pub byte_size: Option<i64>,
}

/// A file in the documents folder's trash.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrashedDocument {
    /// Its path in the trash, relative to the documents folder.
    pub trashed: String,
    /// Where it was, relative to the documents folder.
    pub original: String,
    pub table: String,
    pub pk: String,
    pub at_ms: u64,
}

/// Marks a projected row of the documents table for the documents step:
/// its body may have changed, or its row been deleted.
pub(super) fn mark_due(conn: &Connection, ctx: &Ctx<'_>, key: &RowKey) -> Result<(), DbError> {
    if ctx.mapping.documents().is_some_and(|d| d.table == key.table) {
        conn.prepare_cached(
            "INSERT INTO _cs_doc_due (tbl, pk, state) VALUES (?1, ?2, 'due')
             ON CONFLICT (tbl, pk) DO UPDATE SET state = 'due'",
        )?
        .execute(params![key.table, key.pk])?;
    }
    Ok(())
}

fn doc_file(conn: &Connection, key: &RowKey) -> Result<Option<DocFile>, DbError> {
    let found: Option<(String, i64, i64, String)> = conn
        .prepare_cached("SELECT path, size, mtime_ns, body FROM _cs_doc_files WHERE tbl = ?1 AND pk = ?2")?
        .query_row(params![key.table, key.pk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    Ok(found.and_then(|(path, size, mtime_ns, body)| {
        Some(DocFile { path, size: size as u64, mtime_ns, body: Body::parse(&body)? })
    }))
}

pub(super) fn set_doc_file(conn: &Connection, key: &RowKey, file: &DocFile) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO _cs_doc_files (tbl, pk, path, file, size, mtime_ns, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (tbl, pk) DO UPDATE SET path = excluded.path, file = excluded.file, size = excluded.size,
           mtime_ns = excluded.mtime_ns, body = excluded.body",
    )?
    .execute(params![
        key.table,
        key.pk,
        file.path,
        same_file_key(&file.path),
        file.size as i64,
        file.mtime_ns,
        file.body.encode()
    ])?;
    Ok(())
}

/// What an edit of a document's file saw of its body field: when the file
/// was last in step with the body the row shows (`file_was`), every
/// version of the field; else only the versions of the body it was in step
/// with, so a body that arrived since and was not placed yet stays as a
/// concurrent value (a conflict), not overwritten unseen.
pub(super) fn body_base(conn: &Connection, key: &RowKey, file_was: Option<&Body>) -> Result<Base, DbError> {
    let row = load_row(conn, &key.table, &key.pk)?.map(|(r, _)| r);
    let state = row.as_ref().and_then(|r| r.fields.get(BODY_FIELD));
    Ok(match (state, file_was) {
        (Some(state), Some(was)) if state.winner().value().as_text() == Some(&was.encode()) => {
            state.context()
        }
        (Some(state), Some(was)) => {
            let was = was.encode();
            let mut base = Base::default();
            for v in state.versions().iter().filter(|v| v.value().as_text() == Some(&was)) {
                base.add(v.hlc());
                base.merge(v.base());
            }
            base
        }
        _ => Base::default(),
    })
}

impl Db {
    /// The document's local file as last in step with the state.
    pub fn doc_file(&self, key: &RowKey) -> Result<Option<DocFile>, DbError> {
        doc_file(&self.conn, key)
    }

    /// Every recorded document file, by row key.
    pub fn doc_files(&self, table: &str) -> Result<std::collections::HashMap<String, DocFile>, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pk, path, size, mtime_ns, body FROM _cs_doc_files WHERE tbl = ?1")?;
        let rows = stmt.query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, i64>(2)?, r.get(3)?, r.get::<_, String>(4)?))
        })?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (pk, path, size, mtime_ns, body) = row?;
            if let Some(body) = Body::parse(&body) {
                out.insert(pk, DocFile { path, size: size as u64, mtime_ns, body });
            }
        }
        Ok(out)
    }

    /// Records a document's local file as in step with the state (a body
    /// placed, or a file found to hold the body the row shows).
    pub fn set_doc_file(&self, key: &RowKey, file: &DocFile) -> Result<(), DbError> {
        set_doc_file(&self.conn, key, file)
    }

    /// Another document whose file is at `path` here (however its path is
    /// written), if there is one.
    pub fn doc_file_at(&self, key: &RowKey, path: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT pk FROM _cs_doc_files WHERE tbl = ?1 AND file = ?2 AND pk != ?3 LIMIT 1")?
            .query_row(params![key.table, same_file_key(path), key.pk], |r| r.get(0))
            .optional()?)
    }

    pub fn forget_doc_file(&self, key: &RowKey) -> Result<(), DbError> {
        self.conn
            .prepare_cached("DELETE FROM _cs_doc_files WHERE tbl = ?1 AND pk = ?2")?
            .execute(params![key.table, key.pk])?;
        Ok(())
    }

    /// The documents the documents step must look at, oldest first.
    pub fn due_documents(&self) -> Result<Vec<DueDocument>, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT tbl, pk, state, said, since_ms FROM _cs_doc_due ORDER BY tbl, pk")?;
        let rows = stmt.query_map([], |r| {
            Ok(DueDocument {
                table: r.get(0)?,
                pk: r.get(1)?,
                state: DueState::parse(&r.get::<_, String>(2)?),
                said: r.get(3)?,
                since_ms: r.get::<_, Option<i64>>(4)?.map(|t| t.max(0) as u64),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many documents wait for their body, and how many failed a check.
    pub fn documents_short(&self) -> Result<(u64, u64), DbError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FILTER (WHERE state = 'waiting'), count(*) FILTER (WHERE state = 'failed') FROM _cs_doc_due",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// Keeps a document for the next run: waiting or failed, with what was
    /// said (the time it first got into that state stays).
    pub fn set_due(&self, key: &RowKey, state: DueState, said: &str, now_ms: u64) -> Result<(), DbError> {
        self.conn
            .prepare_cached(
                "INSERT INTO _cs_doc_due (tbl, pk, state, said, since_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tbl, pk) DO UPDATE SET said = excluded.said,
                   since_ms = CASE WHEN state = excluded.state AND since_ms IS NOT NULL THEN since_ms
                                   ELSE excluded.since_ms END,
                   state = excluded.state",
            )?
            .execute(params![key.table, key.pk, state.as_str(), said, now_ms as i64])?;
        Ok(())
    }

    /// The document's file is in step (or has nothing to be in step with).
    pub fn clear_due(&self, key: &RowKey) -> Result<(), DbError> {
        self.conn
            .prepare_cached("DELETE FROM _cs_doc_due WHERE tbl = ?1 AND pk = ?2")?
            .execute(params![key.table, key.pk])?;
        Ok(())
    }

    /// A row's document state: whether it is alive and the bodies its body
    /// field holds, the shown one last (`None`: no state).
    pub fn document_bodies(&self, key: &RowKey) -> Result<Option<(bool, Vec<Body>)>, DbError> {
        let Some((row, _)) = load_row(&self.conn, &key.table, &key.pk)? else { return Ok(None) };
        let bodies = row
            .fields
            .get(BODY_FIELD)
            .map(|f| f.versions().iter().filter_map(|v| v.value().as_text().and_then(Body::parse)).collect())
            .unwrap_or_default();
        Ok(Some((row.is_alive(), bodies)))
    }

    /// The app's path column of every row of the documents table: (key,
    /// path as the app wrote it; `None` when it is not text).
    pub fn document_paths(&self) -> Result<Vec<(String, Option<String>)>, DbError> {
        let Some(d) = self.mapping.documents() else { return Ok(Vec::new()) };
        let (key, _) = self.mapping.table(&d.table).expect("the mapping checks its documents table");
        let sql = format!(
            "SELECT CAST({} AS TEXT), CASE WHEN typeof({p}) = 'text' THEN {p} END FROM {}",
            super::schema::quote(key),
            super::schema::quote(&d.table),
            p = super::schema::quote(&d.path),
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?, r.get(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            if let (Some(pk), path) = row? {
                out.push((pk, path));
            }
        }
        Ok(out)
    }

    /// The app's row of a document: `None` when the app's table has no
    /// such row; else its path (`None` when it is not text) and the
    /// checksum columns the app keeps, if its table has them (the
    /// reference schema's `sha256` and `byte_size`).
    pub fn document_row(&self, pk: &str) -> Result<Option<DocumentRow>, DbError> {
        let Some(d) = self.mapping.documents() else { return Ok(None) };
        let (key, _) = self.mapping.table(&d.table).expect("the mapping checks its documents table");
        let columns = self.columns.get(&d.table).map(Vec::as_slice).unwrap_or_default();
        let has = |c: &str| columns.iter().any(|x| x == c);
        let q = super::schema::quote;
        let text = |c: &str| {
            if has(c) { format!("CASE WHEN typeof({0}) = 'text' THEN {0} END", q(c)) } else { "NULL".into() }
        };
        let int = |c: &str| {
            if has(c) {
                format!("CASE WHEN typeof({0}) = 'integer' THEN {0} END", q(c))
            } else {
                "NULL".into()
            }
        };
        let sql = format!(
            "SELECT {}, {}, {} FROM {} WHERE {} = ?1",
            text(&d.path),
            text("sha256"),
            int("byte_size"),
            q(&d.table),
            q(key)
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([pk], |r| {
                Ok(DocumentRow { path: r.get(0)?, sha256: r.get(1)?, byte_size: r.get::<_, Option<i64>>(2)? })
            })
            .optional()?)
    }

    /// The patient a row belongs to, as the state files it.
    pub fn patient_of_row(&self, key: &RowKey) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT patient FROM _cs_rows WHERE tbl = ?1 AND pk = ?2")?
            .query_row(params![key.table, key.pk], |r| r.get(0))
            .optional()?
            .flatten())
    }

    /// Records a body this site wrote into `docs/` (it may remove it once
    /// nothing names it).
    pub fn note_published(&self, body: &Body) -> Result<(), DbError> {
        self.conn
            .prepare_cached(
                "INSERT INTO _cs_doc_bodies (sha) VALUES (?1)
                 ON CONFLICT (sha) DO UPDATE SET unreferenced_ms = NULL, unreferenced_head = NULL",
            )?
            .execute([body.sha256()])?;
        Ok(())
    }

    /// The bodies this site wrote: sha256, and since when (and this site's
    /// export head then) nothing has named it.
    pub fn published_bodies(&self) -> Result<Vec<(String, Unreferenced)>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sha, unreferenced_ms, unreferenced_head FROM _cs_doc_bodies ORDER BY sha",
        )?;
        let rows = stmt.query_map([], |r| {
            let ms: Option<i64> = r.get(1)?;
            let head: Option<i64> = r.get(2)?;
            Ok((r.get(0)?, ms.zip(head).map(|(m, h)| (m.max(0) as u64, h.max(0) as u64))))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Marks a published body as named by nothing since `now_ms`, when
    /// this site's exports reached `head` (`None`: named again).
    pub fn mark_unreferenced(&self, sha: &str, since: Option<(u64, u64)>) -> Result<(), DbError> {
        self.conn
            .prepare_cached(
                "UPDATE _cs_doc_bodies SET unreferenced_ms = ?2, unreferenced_head = ?3 WHERE sha = ?1",
            )?
            .execute(params![sha, since.map(|s| s.0 as i64), since.map(|s| s.1 as i64)])?;
        Ok(())
    }

    pub fn forget_published(&self, sha: &str) -> Result<(), DbError> {
        self.conn.prepare_cached("DELETE FROM _cs_doc_bodies WHERE sha = ?1")?.execute([sha])?;
        Ok(())
    }

    /// Every body any version of any row of `table` names (losers of a
    /// conflict and the history of deleted rows included).
    pub fn referenced_bodies(&self, table: &str) -> Result<std::collections::HashSet<String>, DbError> {
        let mut stmt = self.conn.prepare_cached("SELECT pk, cl, state FROM _cs_rows WHERE tbl = ?1")?;
        let mut rows = stmt.query([table])?;
        let mut out = std::collections::HashSet::new();
        while let Some(r) = rows.next()? {
            let (pk, cl, blob): (String, i64, Vec<u8>) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let row = super::patients::decode_row(table, &pk, cl, &blob)?;
            if let Some(field) = row.fields.get(BODY_FIELD) {
                for v in field.versions() {
                    if let Some(body) = v.value().as_text().and_then(Body::parse) {
                        out.insert(body.sha256().to_owned());
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn add_trash(&self, item: &TrashedDocument) -> Result<(), DbError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO _cs_doc_trash (trashed, original, tbl, pk, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![item.trashed, item.original, item.table, item.pk, item.at_ms as i64])?;
        Ok(())
    }

    pub fn trash(&self) -> Result<Vec<TrashedDocument>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT trashed, original, tbl, pk, at_ms FROM _cs_doc_trash ORDER BY at_ms, trashed",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TrashedDocument {
                trashed: r.get(0)?,
                original: r.get(1)?,
                table: r.get(2)?,
                pk: r.get(3)?,
                at_ms: r.get::<_, i64>(4)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn forget_trash(&self, trashed: &str) -> Result<(), DbError> {
        self.conn.prepare_cached("DELETE FROM _cs_doc_trash WHERE trashed = ?1")?.execute([trashed])?;
        Ok(())
    }
}
