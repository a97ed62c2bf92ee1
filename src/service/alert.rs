//! Sending an alert: the configured shell command (reason in
//! `$CLINICSYNC_ALERT`) and/or a JSON POST to the configured URL. An alert
//! that cannot be sent is logged, never retried in a loop.

use std::time::Duration;

use serde::Serialize;

use super::scheduler::Alert;

/// How long an alert command or POST may take.
const ALERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where alerts go, from the settings.
#[derive(Clone, Debug, Default)]
pub struct AlertTarget {
    pub command: String,
    pub url: String,
    pub site_name: String,
    pub db: String,
}

/// What an alert POST carries.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    kind: &'static str,
    reason: &'a str,
    site_name: &'a str,
    database: &'a str,
    at: String,
}

/// Sends `alert` to every configured target; returns one line per target
/// saying what happened, for the page and the log.
pub async fn send(target: &AlertTarget, alert: &Alert) -> Vec<String> {
    let mut results = Vec::new();
    let text = format!("clinicsync at {}: {}", target.site_name, alert.reason);
    if !target.command.trim().is_empty() {
        let mut cmd = tokio::process::Command::from(crate::platform::shell(&target.command));
        cmd.env("CLINICSYNC_ALERT", &text)
            .env("CLINICSYNC_ALERT_KIND", alert.kind.as_str())
            .env("CLINICSYNC_DB", &target.db)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let line = match tokio::time::timeout(ALERT_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => "alert command ran".to_owned(),
            Ok(Ok(out)) => format!(
                "alert command failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Ok(Err(e)) => format!("alert command could not start: {e}"),
            Err(_) => format!("alert command did not finish within {}s", ALERT_TIMEOUT.as_secs()),
        };
        results.push(line);
    }
    if !target.url.trim().is_empty() {
        let payload = Payload {
            kind: alert.kind.as_str(),
            reason: &alert.reason,
            site_name: &target.site_name,
            database: &target.db,
            at: crate::xmlstore::format_time(crate::model::Clock::now_ms(&crate::engine::SystemClock)),
        };
        let body = serde_json::to_string(&payload).unwrap_or_default();
        let url = target.url.clone();
        let sent = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(ALERT_TIMEOUT)).build().into();
            agent.post(&url).header("Content-Type", "application/json").send(body)
        })
        .await;
        results.push(match sent {
            Ok(Ok(_)) => "alert posted".to_owned(),
            Ok(Err(e)) => format!("alert POST to {} failed: {e}", target.url),
            Err(e) => format!("alert POST to {} failed: {e}", target.url),
        });
    }
    if results.is_empty() {
        results.push("no alert_command or alert_url is set; the alert is only shown here".to_owned());
    }
    for line in &results {
        tracing::warn!(kind = alert.kind.as_str(), reason = %alert.reason, "{line}");
    }
    results
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use super::*;
    use crate::service::scheduler::AlertKind;

    fn alert() -> Alert {
        Alert { kind: AlertKind::Failed, reason: "the sync folder is not reachable".into() }
    }

    #[tokio::test]
    async fn the_command_gets_the_reason_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("alert.txt");
        let target = AlertTarget {
            command: crate::platform::testing::write_two_vars(
                "CLINICSYNC_ALERT_KIND",
                "CLINICSYNC_ALERT",
                &out,
            ),
            site_name: "Front desk".into(),
            ..AlertTarget::default()
        };
        let results = send(&target, &alert()).await;
        assert_eq!(results, ["alert command ran"]);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim_end(),
            "failed|clinicsync at Front desk: the sync folder is not reachable"
        );
        let failing = AlertTarget {
            command: crate::platform::testing::fails_saying_broken().into(),
            ..AlertTarget::default()
        };
        let results = send(&failing, &alert()).await;
        assert!(results[0].contains("failed") && results[0].contains("broken"), "{results:?}");
    }

    #[tokio::test]
    async fn the_url_gets_a_json_post() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        let target = AlertTarget { url, site_name: "Branch".into(), ..AlertTarget::default() };
        let results = send(&target, &alert()).await;
        assert_eq!(results, ["alert posted"]);
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /hook "), "{head}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["kind"], "failed");
        assert_eq!(doc["site_name"], "Branch");
        assert_eq!(doc["reason"], "the sync folder is not reachable");
    }
}
