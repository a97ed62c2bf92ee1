//! `clinicsync run` as a process against a real folder, in real time: a
//! file another site writes is applied within 3 s with no interval tick, a
//! row the app inserts is in the folder within 3 s, the web page refuses
//! requests without its token, POSTs without its CSRF token and POSTs from
//! another origin, and SIGTERM stops the service cleanly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A running `clinicsync run`; stopped (SIGTERM, then kill) when dropped.
pub(crate) struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub(crate) base: String,
    pub(crate) token: String,
    stderr: PathBuf,
}

impl Service {
    pub(crate) fn start(db: &Path) -> Service {
        let stderr = db.with_extension("service.err");
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("clinicsync"))
            .arg("--db")
            .arg(db)
            .args(["run", "--web-port", "0"])
            .env("CLINICSYNC_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start clinicsync run");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut link = None;
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if let Some(rest) = line.strip_prefix("Web page: ") {
                link = Some(rest.trim().to_owned());
                break;
            }
        }
        // Keep draining stdout so the service never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let link = link.unwrap_or_else(|| {
            panic!("clinicsync run printed no link: {}", std::fs::read_to_string(&stderr).unwrap_or_default())
        });
        let (base, token) = link.split_once("/?token=").expect("link with a token");
        let service = Service { child, base: base.to_owned(), token: token.to_owned(), stderr };
        // The startup run finishes before the tests measure anything.
        service.wait_for("the startup run", Duration::from_secs(30), || service.runs_finished() >= 1);
        service
    }

    /// An HTTP client that reports every status instead of failing on 4xx.
    pub(crate) fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    }

    pub(crate) fn api_status(&self) -> serde_json::Value {
        let mut response = Self::agent()
            .get(format!("{}/api/status", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .expect("GET /api/status");
        assert_eq!(response.status(), 200);
        response.body_mut().read_json().expect("status JSON")
    }

    /// Waits until no run is in progress or queued.
    pub(crate) fn wait_idle(&self) {
        self.wait_for("the service to be idle", Duration::from_secs(30), || {
            let s = self.api_status();
            s["running"].is_null() && s["queued"] == false
        });
    }

    pub(crate) fn runs_finished(&self) -> u64 {
        self.api_status()["runs_finished"].as_u64().unwrap_or(0)
    }

    /// The CSRF token the page's forms carry.
    pub(crate) fn csrf(&self) -> String {
        let mut response = Self::agent()
            .get(format!("{}/settings", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .expect("GET /settings");
        let html = response.body_mut().read_to_string().expect("settings page");
        let at = html.find(r#"name="csrf" value=""#).expect("a CSRF field") + r#"name="csrf" value=""#.len();
        html[at..].split('"').next().expect("csrf value").to_owned()
    }

    /// Polls `done` every 50 ms; panics with the service's log after `limit`.
    pub(crate) fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !done() {
            if start.elapsed() > limit {
                panic!(
                    "{what}: not within {limit:?}; service log:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// Waits for the process to end on its own (a watchdog kills it after
    /// 30 s, and the test fails); returns its exit status and what it wrote
    /// on stderr.
    pub(crate) fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id();
        let (ended, ended_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let stuck = ended_rx.recv_timeout(Duration::from_secs(30)).is_err();
            if stuck {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
            stuck
        });
        let status = self.child.wait().expect("wait for clinicsync run");
        let _ = ended.send(());
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(!watchdog.join().expect("the watchdog"), "the service did not stop within 30 s: {log}");
        (status, log)
    }

    /// Sends SIGTERM and waits for the process; returns its exit status and
    /// what it wrote on stderr.
    pub(crate) fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = self.terminate();
        (status, std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                return self.child.wait().expect("wait for clinicsync run");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// The page of a `clinicsync run`, as a browser without script uses it:
/// GETs with the token, form POSTs with the CSRF token.
pub(crate) struct Page {
    pub(crate) service: Service,
    agent: ureq::Agent,
    bearer: String,
    pub(crate) csrf: String,
}

impl Page {
    /// Starts the service on `db` with only Sync Now syncing (an hour's
    /// interval, no watching), and waits for its first run.
    pub(crate) fn open(db: &Path) -> Page {
        cli(db).args(["settings", "sync_interval=1h", "watch=off"]).assert().success();
        let service = Service::start(db);
        service.wait_idle();
        let csrf = service.csrf();
        let bearer = format!("Bearer {}", service.token);
        Page { service, agent: Service::agent(), bearer, csrf }
    }

    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        let mut r = self
            .agent
            .get(format!("{}{path}", self.service.base))
            .header("Authorization", &self.bearer)
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    /// POSTs a form (the CSRF token added); status, Location and body.
    pub(crate) fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String, String) {
        let mut body = format!("csrf={}", self.csrf);
        for (k, v) in fields {
            body.push_str(&format!("&{k}={}", v.replace(' ', "+")));
        }
        self.post_body(path, body)
    }

    /// POSTs `body` as it is (a form without the CSRF token, say).
    pub(crate) fn post_body(&self, path: &str, body: String) -> (u16, String, String) {
        let mut r = self
            .agent
            .post(format!("{}{path}", self.service.base))
            .header("Authorization", &self.bearer)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body)
            .unwrap();
        let location = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        (r.status().as_u16(), location, r.body_mut().read_to_string().unwrap())
    }
}

/// Two sites; `a` runs the service with an interval far longer than the
/// test, so only the watcher and the local-change poll can be quick.
fn family_with_service() -> (Family, PathBuf, PathBuf, Service) {
    let fam = Family::new();
    let a = fam.init("a");
    let b = fam.init("b");
    set(&a, &["sync_interval=1h"]);
    let service = Service::start(&a);
    (fam, a, b, service)
}

#[test]
fn the_service_applies_arriving_files_and_exports_local_rows_within_three_seconds() {
    let (fam, a, b, service) = family_with_service();
    let runs_before = service.runs_finished();

    // Another site writes: its segment and patient file land in the folder.
    let patient = add_patient(&app(&b), 7, 2);
    sync_ok(&b);
    let took = service
        .wait_for("site b's patient applied at a", Duration::from_secs(3), || has_patient(&a, &patient));
    eprintln!("applied at a {took:?} after b's sync ended");
    // The rows are committed before the run ends; wait for its end.
    service.wait_for("the run to end", Duration::from_secs(10), || service.runs_finished() > runs_before);
    let status = service.api_status();
    assert_eq!(status["status"]["last_outcome"], "ok", "{status:#}");

    // The app inserts a row at a: it is in the folder within 3 s.
    let ours = add_patient(&app(&a), 8, 1);
    let file = patient_file(&fam.folder(), &ours);
    let took = service.wait_for("a's new patient in the folder", Duration::from_secs(3), || file.exists());
    eprintln!("a's row in the folder after {took:?}");
    let latest = json_of(&a, &["log", "--last", "5"]);
    let triggers: Vec<&str> =
        latest.as_array().unwrap().iter().map(|r| r["run"]["trigger"].as_str().unwrap()).collect();
    assert!(triggers.contains(&"watcher"), "{triggers:?}");
    assert!(triggers.contains(&"local-change"), "{triggers:?}");
    assert!(!triggers.contains(&"interval"), "the interval (1h) never ticked: {triggers:?}");

    // Sync Now from the command line while the service runs: one run at a
    // time, and it succeeds.
    let report = sync_ok(&a);
    assert_eq!(report["outcome"], "ok");

    // b receives a's patient through the folder.
    sync_ok(&b);
    assert!(has_patient(&b, &ours));

    // A second service for the same database refuses to start.
    let second = cli(&a).args(["run", "--web-port", "0"]).timeout(Duration::from_secs(20)).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    let (status, log) = service.stop();
    assert!(status.success(), "clinicsync run exited with {status}: {log}");
    assert!(log.contains("clinicsync: stopped"), "{log}");
}

#[test]
fn the_page_refuses_requests_without_the_token_csrf_or_origin() {
    let (_fam, a, _b, service) = family_with_service();
    let agent = Service::agent();
    let base = &service.base;
    let bearer = format!("Bearer {}", service.token);

    // No token, a wrong token, a wrong link.
    assert_eq!(agent.get(format!("{base}/")).call().unwrap().status(), 401);
    assert_eq!(
        agent
            .get(format!("{base}/api/status"))
            .header("Authorization", "Bearer nope")
            .call()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(agent.get(format!("{base}/?token=wrong")).call().unwrap().status(), 401);
    // The printed link sets a same-site, script-proof cookie and drops the
    // token from the address.
    let response = agent.get(format!("{base}/?token={}", service.token)).call().unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert_eq!(response.headers().get("location").unwrap(), "/");
    // The swap never redirects off the page.
    let response = agent.get(format!("{base}//evil.example/?token={}", service.token)).call().unwrap();
    assert_eq!(response.headers().get("location").unwrap(), "/evil.example/");
    // Another host name (DNS rebinding) is refused even with the token.
    let rebound = agent
        .get(format!("{base}/api/status"))
        .header("Authorization", &bearer)
        .header("Host", "evil.example")
        .call()
        .unwrap();
    assert_eq!(rebound.status(), 421);

    service.wait_idle();
    let runs_before = service.runs_finished();
    let requests = |s: &serde_json::Value| s["sync_requests"].as_u64().unwrap();
    let requests_before = requests(&service.api_status());
    let csrf = service.csrf();
    let post = |path: &str, body: String, origin: Option<&str>| {
        let mut request = agent
            .post(format!("{base}{path}"))
            .header("Authorization", &bearer)
            .header("Content-Type", "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request.send(body).unwrap().status()
    };
    // Without the CSRF token, or with a wrong one: refused.
    assert_eq!(post("/sync", String::new(), None), 403);
    assert_eq!(post("/sync", "csrf=0000".into(), None), 403);
    assert_eq!(post("/settings", "sync_interval=1".into(), None), 403);
    // From another origin, even with the token and the CSRF token: refused.
    let evil = Some("http://evil.example");
    assert_eq!(post("/sync", format!("csrf={csrf}"), evil), 403);
    assert_eq!(post("/settings", format!("csrf={csrf}&sync_interval=1"), evil), 403);
    assert_eq!(post("/settings", format!("csrf={csrf}&sync_interval=1"), Some("null")), 403);
    assert_eq!(service.runs_finished(), runs_before, "no refused request started a sync");
    let settings = json_of(&a, &["settings"]);
    let interval = settings.as_array().unwrap().iter().find(|s| s["key"] == "sync_interval").unwrap();
    assert_eq!(interval["value"], "1h", "no refused request changed a setting");

    // The same requests from the page itself go through.
    assert_eq!(post("/settings", format!("csrf={csrf}&sync_interval=20"), Some(base)), 303);
    let settings = json_of(&a, &["settings"]);
    let interval = settings.as_array().unwrap().iter().find(|s| s["key"] == "sync_interval").unwrap();
    assert_eq!(interval["value"], "20m");
    // A bad value is refused with the reason, and nothing is saved.
    let mut bad = agent
        .post(format!("{base}/settings"))
        .header("Authorization", &bearer)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("csrf={csrf}&sync_interval=soon&folder=/no/such/folder"))
        .unwrap();
    assert_eq!(bad.status(), 400);
    let html = bad.body_mut().read_to_string().unwrap();
    assert!(html.contains("Nothing was saved"), "{html}");
    assert_eq!(post("/sync", format!("csrf={csrf}"), Some(base)), 303);
    assert!(service.runs_finished() > runs_before);
    // The scheduler takes requests in order: once the page's own Sync Now
    // is counted, any request a refused one had made would be too.
    assert_eq!(
        requests(&service.api_status()),
        requests_before + 1,
        "only the page's own Sync Now reached the scheduler"
    );
}

#[test]
fn a_failing_sync_runs_the_alert_command_once_per_incident() {
    let fam = Family::new();
    let a = fam.init("a");
    let alerts = fam.dir.path().join("alerts.log");
    let command = format!("echo \"$CLINICSYNC_ALERT_KIND: $CLINICSYNC_ALERT\" >> '{}'", alerts.display());
    cli(&a)
        .arg("settings")
        .arg("sync_interval=1h")
        .arg(format!("alert_command={command}"))
        .assert()
        .success();
    let service = Service::start(&a);
    let csrf = service.csrf();
    let sync_now = || {
        let status = Service::agent()
            .post(format!("{}/sync", service.base))
            .header("Authorization", format!("Bearer {}", service.token))
            .header("Origin", &service.base)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!("csrf={csrf}"))
            .unwrap()
            .status();
        assert_eq!(status, 303, "Sync Now without script waits for the run, then shows Latest Logs");
        service.api_status()["last_run"]["outcome"].as_str().unwrap().to_owned()
    };
    let lines = || std::fs::read_to_string(&alerts).unwrap_or_default().lines().count();

    // The cloud drive is unmounted: runs fail, one alert.
    let moved = fam.dir.path().join("shared-unmounted");
    std::fs::rename(fam.folder(), &moved).unwrap();
    assert_eq!(sync_now(), "failed");
    assert_eq!(sync_now(), "failed");
    service.wait_for("the alert command", Duration::from_secs(10), || lines() == 1);
    let text = std::fs::read_to_string(&alerts).unwrap();
    assert!(text.starts_with("failed: clinicsync at a: the sync folder"), "{text}");
    assert_eq!(service.api_status()["status"]["online"], false);

    // Back: the incident ends. Gone again: a new incident, a new alert.
    std::fs::rename(&moved, fam.folder()).unwrap();
    assert_eq!(sync_now(), "ok");
    std::fs::rename(fam.folder(), &moved).unwrap();
    assert_eq!(sync_now(), "failed");
    // (One alert per incident, however many runs fail in it, is the
    // scheduler's test on a paused clock.)
    service.wait_for("the second alert", Duration::from_secs(10), || lines() == 2);
    let mut page = Service::agent()
        .get(format!("{}/", service.base))
        .header("Authorization", format!("Bearer {}", service.token))
        .call()
        .unwrap();
    let html = page.body_mut().read_to_string().unwrap();
    assert!(html.contains("Alerts sent") && html.contains("alert command ran"), "{html}");
}

#[test]
fn sigterm_lets_the_run_in_progress_finish() {
    let (_fam, a, b, service) = family_with_service();
    let conn = app(&b);
    for n in 0..400 {
        add_patient(&conn, 1000 + n, 4);
    }
    drop(conn);
    sync_ok(&b);
    // Stop as soon as the run that imports them has applied a first part
    // (whichever run that is: the watcher's or the interval's).
    let patients =
        || -> i64 { app(&a).query_row("SELECT count(*) FROM patients", [], |r| r.get(0)).unwrap() };
    service.wait_for("the run that imports them to apply a part", Duration::from_secs(60), || patients() > 0);
    let seen = patients();
    let (status, log) = service.stop();
    assert!(status.success(), "{log}");
    // No run was cut short: every run recorded its outcome, and the
    // patients it applied are all there.
    let runs = json_of(&a, &["log", "--last", "20"]);
    for r in runs.as_array().unwrap() {
        assert!(!r["run"]["outcome"].is_null(), "an interrupted run: {r:#}");
    }
    assert!(log.contains("stopping after the sync in progress"), "{log}");
    assert!(patients() >= seen, "nothing applied was undone: {log}");
    // What the runs that finished did not reach (B's later segments, when
    // a run began while B was still writing) the next sync applies whole.
    sync_ok(&a);
    assert_eq!(patients(), 400, "{seen} were applied when the stop was asked for: {log}");
}

#[test]
fn the_page_refuses_foreign_referers_and_oversized_forms_and_keeps_its_token_private() {
    use std::os::unix::fs::PermissionsExt;
    let fam = Family::new();
    let a = fam.init("a");
    // A token file that other users can read is not kept.
    let token_file = clinicsync::service::token_path(&a);
    std::fs::write(&token_file, "a".repeat(43)).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let service = Service::start(&a);
    assert_ne!(service.token, "a".repeat(43), "a readable token is replaced");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "readable by this user only: {mode:o}");

    let csrf = service.csrf();
    let bearer = format!("Bearer {}", service.token);
    let requests_before = service.api_status()["sync_requests"].as_u64().unwrap();
    let post = |path: &str, body: String, referer: Option<&str>| {
        let mut request = Service::agent()
            .post(format!("{}{path}", service.base))
            .header("Authorization", &bearer)
            .header("Content-Type", "application/x-www-form-urlencoded");
        if let Some(referer) = referer {
            request = request.header("Referer", referer);
        }
        request.send(body).unwrap()
    };
    // A foreign Referer and no Origin: another site's form.
    for referer in ["http://evil.example/form.html", "http://127.0.0.1:1/x", "http://127.0.0.1.evil.example/"]
    {
        assert_eq!(post("/sync", format!("csrf={csrf}"), Some(referer)).status(), 403, "{referer}");
        assert_eq!(
            post("/settings", format!("csrf={csrf}&alert_command=touch+/tmp/x"), Some(referer)).status(),
            403
        );
    }
    // A body over the limit: 413, and the page says nothing was saved.
    // (Just over it: a far larger body is cut off as it is sent.)
    let huge = format!("csrf={csrf}&alert_url=http://x/{}", "a".repeat(80 * 1024));
    let mut response = post("/settings", huge, Some(&format!("{}/settings", service.base)));
    assert_eq!(response.status(), 413);
    assert!(response.body_mut().read_to_string().unwrap().contains("nothing was saved"));
    let settings = json_of(&a, &["settings"]);
    for key in ["alert_command", "alert_url"] {
        let value = &settings.as_array().unwrap().iter().find(|s| s["key"] == key).unwrap()["value"];
        assert_eq!(value, "", "{key} unchanged");
    }
    // Every response, refusals included, carries the page's protections.
    let refused = Service::agent().get(format!("{}/api/status", service.base)).call().unwrap();
    assert_eq!(refused.status(), 401);
    for (name, want) in
        [("referrer-policy", "same-origin"), ("x-frame-options", "DENY"), ("cache-control", "no-store")]
    {
        assert_eq!(refused.headers().get(name).and_then(|v| v.to_str().ok()), Some(want), "{name}");
    }
    let csp = refused.headers().get("content-security-policy").unwrap().to_str().unwrap().to_owned();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self';"),
        "no inline script: {csp}"
    );
    // The page's own Sync Now, with its own Referer, goes through.
    assert_eq!(post("/sync", format!("csrf={csrf}"), Some(&format!("{}/", service.base))).status(), 303);
    assert_eq!(service.api_status()["sync_requests"].as_u64().unwrap(), requests_before + 1);
}

#[test]
fn connections_that_never_finish_their_headers_are_closed_and_cannot_pile_up() {
    use std::io::{Read, Write};
    let fam = Family::new();
    let a = fam.init("a");
    let service = Service::start(&a);
    let addr = service.base.trim_start_matches("http://").to_owned();
    // Slow clients: headers begun, never finished.
    let mut slow: Vec<std::net::TcpStream> = (0..80)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s
        })
        .collect();
    // Each is closed by the server: beyond the limit at once, the others
    // when their headers time out (a read that ends is the event).
    for s in &mut slow {
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) => {
                let answer = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    n == 0 || answer.starts_with("HTTP/1.1 408"),
                    "closed, or told it timed out: {answer:?}"
                );
            }
            // Closed before reading what was sent: a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the connection was still open after a minute: {e}"),
        }
    }
    // And the page answers as before.
    assert_eq!(service.api_status()["status"]["site_name"], "a");
}
