//! A small W3C WebDriver client (over ureq) driving Debian's chromedriver
//! and headless Chromium: start, navigate, find, click, type, read text,
//! run a script, take a screenshot.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process with one browser session; both end on drop.
pub(crate) struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Where Debian puts Chromium and its driver (`.ci/run` installs both).
pub(crate) fn available() -> Result<(), String> {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(bin).exists() {
            return Err(format!(
                "{bin} is missing: install the Debian packages chromium and chromium-driver"
            ));
        }
    }
    Ok(())
}

impl Browser {
    pub(crate) fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let ready = agent
                .get(format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let mut browser = Browser { driver, base, session: String::new(), agent, _profile: profile };
        let created = browser.call("POST", "/session", Some(caps));
        browser.session = created["sessionId"].as_str().expect("a session id").to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|doc| panic!("WebDriver {method} {path} answered: {doc}"))
    }

    /// One WebDriver command; `Err` carries the error document.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut response = response.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let doc: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        if status.is_success() { Ok(doc["value"].clone()) } else { Err(doc) }
    }

    /// Runs a command on the element `css` matches, finding it again when
    /// the page was replaced in between (a stale element) or trying again
    /// while it is not ready for it (covered, not laid out yet, not
    /// editable yet: the page is still loading or redrawing): up to 10 s.
    fn on_element(&self, css: &str, method: &str, action: &str, body: Option<Value>) -> Value {
        const PASSING: [&str; 4] = [
            "stale element reference",
            "element click intercepted",
            "element not interactable",
            "invalid element state",
        ];
        // ChromeDriver reports a node of a document the page replaced while
        // it ran the command as an unknown error with this message: a stale
        // element too.
        let replaced = |doc: &Value| {
            doc["value"]["error"] == "unknown error"
                && doc["value"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("does not belong to the document"))
        };
        let start = Instant::now();
        loop {
            let id = self.find(css);
            let path = format!("/session/{}/element/{id}{action}", self.session);
            match self.try_call(method, &path, body.clone()) {
                Ok(v) => return v,
                Err(doc) if PASSING.iter().any(|e| doc["value"]["error"] == *e) || replaced(&doc) => {
                    assert!(start.elapsed() < Duration::from_secs(10), "{css:?} stays unusable: {doc}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(doc) => panic!("WebDriver {method} {action} on {css:?} answered: {doc}"),
            }
        }
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub(crate) fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    pub(crate) fn url(&self) -> String {
        self.session_call("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// The first element matching a CSS selector, waiting up to 10 s.
    pub(crate) fn find(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let found = self
                .agent
                .post(&url)
                .send_json(json!({ "using": "css selector", "value": css }))
                .ok()
                .filter(|r| r.status().is_success())
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok());
            if let Some(doc) = found
                && let Some(id) = doc["value"][ELEMENT].as_str()
            {
                return id.to_owned();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no element {css:?} on {}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn click(&self, css: &str) {
        self.on_element(css, "POST", "/click", None);
    }

    /// Clears a field and types `text` into it.
    pub(crate) fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "POST", "/clear", None);
        self.on_element(css, "POST", "/value", Some(json!({ "text": text })));
    }

    pub(crate) fn text(&self, css: &str) -> String {
        self.on_element(css, "GET", "/text", None).as_str().unwrap_or_default().to_owned()
    }

    /// Waits up to `limit` for the text of `css` to satisfy `ok`.
    pub(crate) fn wait_text(&self, css: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.text(css);
            if ok(&text) {
                return text;
            }
            assert!(start.elapsed() < limit, "{css:?} still reads {text:?} after {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Presses and releases one key on whatever has the focus, as a
    /// keyboard would (`\u{E004}` Tab, `\u{E007}` Enter).
    pub(crate) fn press(&self, key: &str) {
        self.session_call(
            "POST",
            "/actions",
            Some(json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": [
                { "type": "keyDown", "value": key }, { "type": "keyUp", "value": key }
            ] }] })),
        );
    }

    /// Runs an async script: `arguments[0]` is the callback.
    pub(crate) fn run_async(&self, script: &str) -> Value {
        self.session_call("POST", "/execute/async", Some(json!({ "script": script, "args": [] })))
    }

    /// Saves a PNG of the viewport to `path`.
    pub(crate) fn screenshot(&self, path: &Path) {
        let data = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 screenshot"))
            .expect("decode screenshot");
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("screenshot dir");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.agent.delete(format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
