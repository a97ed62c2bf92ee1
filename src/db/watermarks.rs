//! How far this site has applied each other site's change-log
//! (`_cs_watermarks`).

use std::collections::BTreeMap;

use rusqlite::params;

use super::{Db, DbError, WriteTx};
use crate::model::SiteId;

pub(super) const TABLE: &str = "
-- The last segment applied from each other site.
CREATE TABLE IF NOT EXISTS _cs_watermarks (site TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
";

impl Db {
    /// The last segment applied from each other site.
    pub fn watermarks(&self) -> Result<BTreeMap<SiteId, u64>, DbError> {
        let mut stmt = self.conn.prepare("SELECT site, seq FROM _cs_watermarks")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (site, seq) = row?;
            let site = SiteId::parse(&site).map_err(|e| DbError::Corrupt(format!("watermark of {e}")))?;
            out.insert(site, seq as u64);
        }
        Ok(out)
    }
}

impl WriteTx<'_> {
    /// Records the last segment applied from `site`.
    pub fn set_watermark(&self, site: SiteId, seq: u64) -> Result<(), DbError> {
        self.tx
            .prepare_cached(
                "INSERT INTO _cs_watermarks (site, seq) VALUES (?1, ?2) ON CONFLICT (site) DO UPDATE SET seq = excluded.seq",
            )?
            .execute(params![site.to_string(), seq as i64])?;
        Ok(())
    }
}
