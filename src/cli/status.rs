//! `clinicsync status` for people: one line per fact, then what waits.

use crate::engine::StatusReport;
use crate::model::{short_id, shown};

pub(super) fn print_status(s: &StatusReport) {
    say!("{}", shown(&s.verdict.sentence));
    for n in &s.verdict.needs {
        say!("  - {} (`{}`)", shown(&n.what), n.command);
    }
    say!("Site:      {} ({})", shown(&s.site_name), short_id(&s.site));
    say!("Family:    {}", short_id(&s.family));
    say!("Folder:    {} ({})", shown(&s.folder), if s.online { "online" } else { "OFFLINE" });
    let last = s.last_sync.as_deref().unwrap_or("never");
    say!("Last sync: {} ({})", shown(last), shown(s.last_outcome.as_deref().unwrap_or("no run yet")));
    say!("Pending:   {} local changes not yet in the folder", s.pending_changes);
    say!("Conflicts: {} open (see `clinicsync conflicts`)", s.open_conflicts);
    if s.documents.mapped {
        match &s.documents.folder {
            None => say!("Documents: files do not travel (documents_folder is not set)"),
            Some(_) if s.documents.failed > 0 => say!(
                "Documents: {} failed their integrity check, {} waiting (see `clinicsync documents`)",
                s.documents.failed,
                s.documents.waiting
            ),
            Some(folder) if s.documents.waiting > 0 => say!(
                "Documents: waiting for {} documents whose files have not arrived yet ({})",
                s.documents.waiting,
                shown(folder)
            ),
            Some(folder) => say!("Documents: in step ({})", shown(folder)),
        }
    }
    if !s.kept_copies.is_empty() {
        say!("Conflict copies merged and kept (auto_delete_conflicts is off):");
        for c in &s.kept_copies {
            say!("  {} (made by {}), merged into {}", shown(&c.path), shown(&c.client), shown(&c.original));
        }
    }
    if !s.sites.is_empty() {
        say!("Sites:");
        for site in &s.sites {
            let me = if site.this_site { " (this site)" } else { "" };
            let last = site.last_sync.as_deref().unwrap_or("never");
            let warning = site.warning.as_deref().map(|w| format!(" — {w}")).unwrap_or_default();
            let behind = match site.applied_seq {
                Some(applied) if applied < site.head_seq => {
                    format!(", {} of its exports not yet applied here", site.head_seq - applied)
                }
                _ => String::new(),
            };
            say!(
                "  {} {}{me}: last sync {}, clinicsync {}{behind}{}",
                shown(short_id(&site.site)),
                shown(&site.name),
                shown(last),
                shown(&site.app_version),
                shown(&warning)
            );
        }
    }
    let waiting: Vec<_> = s.tables.iter().filter(|t| t.waiting).collect();
    if waiting.is_empty() {
        say!("Tables:    no changes waiting");
    } else {
        say!("Tables:    changes wait (`clinicsync sync --only TABLE` carries one table, a full sync all):");
        for t in waiting {
            let mut what = Vec::new();
            if t.to_send > 0 {
                what.push(format!(
                    "{} here to send",
                    crate::engine::counted(t.to_send, "changed row", "changed rows")
                ));
            }
            if let Some(n) = t.from_others.filter(|n| *n > 0) {
                what.push(format!("{} from other sites to apply", crate::engine::counted(n, "row", "rows")));
            }
            say!("  {}: {}", shown(&t.table), what.join(", "));
        }
    }
    if !s.held_patients.is_empty() {
        say!(
            "Deletions waiting (`sync --confirm-deletes` deletes them here too, `sync --keep-deleted` keeps them):"
        );
        for p in &s.held_patients {
            let name = p
                .name
                .as_deref()
                .map(|n| shown(n).into_owned())
                .unwrap_or_else(|| format!("patient {}", shown(&p.id)));
            let by = p.site_name.as_deref().or(p.site.as_deref().map(short_id)).unwrap_or("another site");
            say!(
                "  {name}, with {} other rows, deleted at {} {}",
                p.rows,
                shown(by),
                shown(p.deleted.as_deref().unwrap_or(""))
            );
        }
        let more = s.held_deletes.patients.saturating_sub(s.held_patients.len() as u64);
        if more > 0 {
            say!("  and {more} more patients");
        }
    }
    for w in &s.warnings {
        say!("Warning:   {}", shown(w));
    }
}
