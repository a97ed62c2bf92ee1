//! Starting `clinicsync run` when the user logs in: the definition each
//! system's service manager takes (a systemd user unit on Linux, a launchd
//! agent on macOS, a Task Scheduler task at logon on Windows), where it is
//! kept, and the commands that register, remove and look for it. All three
//! are built on every system (so each is tested everywhere);
//! [`Manager::here`] picks the one this system uses.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A system's way of starting a program at login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
    TaskScheduler,
}

impl Manager {
    /// This system's manager (`None` on a system clinicsync has none for).
    pub fn here() -> Option<Manager> {
        if cfg!(target_os = "macos") {
            Some(Manager::Launchd)
        } else if cfg!(windows) {
            Some(Manager::TaskScheduler)
        } else if cfg!(target_os = "linux") {
            Some(Manager::Systemd)
        } else {
            None
        }
    }

    /// What an entry of this manager is called, for sentences.
    pub fn entry_kind(self) -> &'static str {
        match self {
            Manager::Systemd => "a systemd user unit",
            Manager::Launchd => "a launchd agent",
            Manager::TaskScheduler => "a Task Scheduler task at logon",
        }
    }
}

/// What the definition is made from: the user's folders and names, read
/// once from the environment ([`Account::current`]) or given by a test.
#[derive(Clone, Debug, Default)]
pub struct Account {
    /// `$HOME` (`%USERPROFILE%` on Windows).
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`, when set.
    pub config_home: Option<PathBuf>,
    /// The numeric user id (launchd's `gui/<uid>` domain).
    pub uid: Option<u32>,
    /// `DOMAIN\user` on Windows (the task runs as this user at its logon).
    pub user: Option<String>,
}

impl Account {
    pub fn current() -> Account {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let home = if cfg!(windows) { var("USERPROFILE") } else { var("HOME") };
        #[cfg(unix)]
        let uid = Some(rustix::process::getuid().as_raw());
        #[cfg(not(unix))]
        let uid = None;
        let user = match (std::env::var("USERDOMAIN").ok(), std::env::var("USERNAME").ok()) {
            (Some(domain), Some(name)) if !domain.is_empty() => Some(format!("{domain}\\{name}")),
            (_, Some(name)) => Some(name),
            _ => None,
        };
        Account {
            home: home.map(PathBuf::from),
            config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            uid,
            user,
        }
    }
}

/// One command a step runs; `may_fail` when its failure changes nothing
/// (stopping an entry that is not running).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub args: Vec<OsString>,
    pub may_fail: bool,
}

fn step(args: &[&dyn AsRef<std::ffi::OsStr>], may_fail: bool) -> Step {
    Step { args: args.iter().map(|a| a.as_ref().to_os_string()).collect(), may_fail }
}

/// The entry for one database: its definition and how to put it in place.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: Manager,
    /// The unit's, agent's or task's name.
    pub name: String,
    /// Where the definition is written (systemd, launchd); `None` when it
    /// is handed to the manager, which keeps it (Task Scheduler).
    pub file: Option<PathBuf>,
    /// The definition, as written or handed over.
    pub text: String,
    /// Run after the definition is written (with [`Entry::handover`] in
    /// place for Task Scheduler): registers it and starts it now.
    pub register: Vec<Step>,
    /// Stops and unregisters it (before the file is removed).
    pub unregister: Vec<Step>,
    /// Prints the registered definition, which holds `<Task`, when the
    /// entry is registered (Task Scheduler; the others are registered when
    /// their file exists).
    pub query: Option<Step>,
    /// The file the definition is handed over in, when it is not kept in
    /// `file` (Task Scheduler reads it from there; removed afterwards).
    pub handover: Option<PathBuf>,
}

impl Entry {
    /// The definition's bytes as the manager reads them (Task Scheduler
    /// wants UTF-16 with a byte-order mark; the others UTF-8).
    pub fn bytes(&self) -> Vec<u8> {
        match self.manager {
            Manager::TaskScheduler => {
                let mut out = vec![0xFF, 0xFE];
                for unit in self.text.encode_utf16() {
                    out.extend_from_slice(&unit.to_le_bytes());
                }
                out
            }
            _ => self.text.clone().into_bytes(),
        }
    }
}

/// The entry that starts `exe --db db run` at login. `exe` and `db` must
/// be absolute; `key` tells databases apart in the entry's name (a few hex
/// digits of the database's path); `description` says what it is.
/// `temp` is where Task Scheduler's handover file goes.
pub fn entry(
    manager: Manager,
    account: &Account,
    exe: &Path,
    db: &Path,
    key: &str,
    description: &str,
    temp: &Path,
) -> Result<Entry, String> {
    for path in [exe, db] {
        let text = path.to_str().ok_or_else(|| format!("{} is not valid Unicode", path.display()))?;
        if text.chars().any(char::is_control) {
            return Err(format!("{text:?} holds a control character; a service definition cannot carry it"));
        }
    }
    let (exe_s, db_s) = (exe.to_str().unwrap_or_default(), db.to_str().unwrap_or_default());
    let description = description.replace(|c: char| c.is_control(), " ");
    match manager {
        Manager::Systemd => {
            let name = format!("clinicsync-{key}.service");
            let dir = match (&account.config_home, &account.home) {
                (Some(config), _) => config.clone(),
                (None, Some(home)) => home.join(".config"),
                (None, None) => return Err("neither XDG_CONFIG_HOME nor HOME is set".into()),
            };
            let exec = [exe_s, "--db", db_s, "run"].map(systemd_quote).join(" ");
            let text = format!(
                "[Unit]\n\
                 Description={}\n\
                 \n\
                 [Service]\n\
                 Type=simple\n\
                 ExecStart={exec}\n\
                 # clinicsync stops on SIGTERM after the run in progress.\n\
                 TimeoutStopSec=300\n\
                 Restart=on-failure\n\
                 RestartSec=60\n\
                 \n\
                 [Install]\n\
                 WantedBy=default.target\n",
                systemd_escape(&description)
            );
            let systemctl = |args: &[&str], may_fail| {
                let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"systemctl", &"--user"];
                all.extend(args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
                step(&all, may_fail)
            };
            Ok(Entry {
                manager,
                file: Some(dir.join("systemd").join("user").join(&name)),
                text,
                register: vec![
                    systemctl(&["daemon-reload"], false),
                    systemctl(&["enable", "--now", &name], false),
                ],
                unregister: vec![
                    systemctl(&["disable", "--now", &name], true),
                    systemctl(&["daemon-reload"], true),
                ],
                query: None,
                handover: None,
                name,
            })
        }
        Manager::Launchd => {
            let name = format!("org.clinicsync.{key}");
            let home = account.home.as_ref().ok_or("HOME is not set")?;
            let uid = account.uid.ok_or("the user id is not known")?;
            let file = home.join("Library").join("LaunchAgents").join(format!("{name}.plist"));
            let log = home.join("Library").join("Logs").join(format!("clinicsync-{key}.log"));
            let args: String = [exe_s, "--db", db_s, "run"]
                .iter()
                .map(|a| format!("    <string>{}</string>\n", xml(a)))
                .collect();
            let text = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
                 <plist version=\"1.0\">\n\
                 <dict>\n\
                   <key>Label</key>\n  <string>{label}</string>\n\
                   <key>Comment</key>\n  <string>{comment}</string>\n\
                   <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n\
                   <key>RunAtLoad</key>\n  <true/>\n\
                   <key>KeepAlive</key>\n  <dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>\n\
                   <key>ThrottleInterval</key>\n  <integer>60</integer>\n\
                   <key>ExitTimeOut</key>\n  <integer>300</integer>\n\
                   <key>ProcessType</key>\n  <string>Background</string>\n\
                   <key>StandardErrorPath</key>\n  <string>{log}</string>\n\
                 </dict>\n\
                 </plist>\n",
                label = xml(&name),
                comment = xml(&description),
                log = xml(&log.to_string_lossy()),
            );
            let domain = format!("gui/{uid}");
            let target = format!("{domain}/{name}");
            Ok(Entry {
                manager,
                register: vec![step(&[&"launchctl", &"bootstrap", &domain, &file], false)],
                unregister: vec![step(&[&"launchctl", &"bootout", &target], true)],
                file: Some(file),
                text,
                query: None,
                handover: None,
                name,
            })
        }
        Manager::TaskScheduler => {
            let name = format!("clinicsync\\{key}");
            let user = account.user.as_deref().ok_or("USERNAME is not set")?;
            let arguments = ["--db", db_s, "run"].map(windows_quote).join(" ");
            let text = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-16\"?>\r\n\
                 <Task version=\"1.2\" xmlns=\"http://schemas.microsoft.com/windows/2004/02/mit/task\">\r\n\
                 \x20 <RegistrationInfo>\r\n\
                 \x20   <Description>{description}</Description>\r\n\
                 \x20 </RegistrationInfo>\r\n\
                 \x20 <Triggers>\r\n\
                 \x20   <LogonTrigger>\r\n\
                 \x20     <Enabled>true</Enabled>\r\n\
                 \x20     <UserId>{user}</UserId>\r\n\
                 \x20   </LogonTrigger>\r\n\
                 \x20 </Triggers>\r\n\
                 \x20 <Principals>\r\n\
                 \x20   <Principal id=\"Author\">\r\n\
                 \x20     <UserId>{user}</UserId>\r\n\
                 \x20     <LogonType>InteractiveToken</LogonType>\r\n\
                 \x20     <RunLevel>LeastPrivilege</RunLevel>\r\n\
                 \x20   </Principal>\r\n\
                 \x20 </Principals>\r\n\
                 \x20 <Settings>\r\n\
                 \x20   <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>\r\n\
                 \x20   <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>\r\n\
                 \x20   <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>\r\n\
                 \x20   <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>\r\n\
                 \x20   <RestartOnFailure>\r\n\
                 \x20     <Interval>PT1M</Interval>\r\n\
                 \x20     <Count>999</Count>\r\n\
                 \x20   </RestartOnFailure>\r\n\
                 \x20 </Settings>\r\n\
                 \x20 <Actions Context=\"Author\">\r\n\
                 \x20   <Exec>\r\n\
                 \x20     <Command>{command}</Command>\r\n\
                 \x20     <Arguments>{arguments}</Arguments>\r\n\
                 \x20   </Exec>\r\n\
                 \x20 </Actions>\r\n\
                 </Task>\r\n",
                description = xml(&description),
                user = xml(user),
                command = xml(&windows_quote(exe_s)),
                arguments = xml(&arguments),
            );
            let handover = temp.join(format!("clinicsync-{key}-task.xml"));
            Ok(Entry {
                manager,
                file: None,
                text,
                register: vec![
                    step(&[&"schtasks", &"/Create", &"/TN", &name, &"/XML", &handover, &"/F"], false),
                    step(&[&"schtasks", &"/Run", &"/TN", &name], false),
                ],
                unregister: vec![
                    step(&[&"schtasks", &"/End", &"/TN", &name], true),
                    step(&[&"schtasks", &"/Delete", &"/TN", &name, &"/F"], false),
                ],
                query: Some(step(&[&"schtasks", &"/Query", &"/TN", &name, &"/XML"], true)),
                handover: Some(handover),
                name,
            })
        }
    }
}

/// `%` and `$` doubled: systemd expands specifiers and variables in unit
/// settings.
fn systemd_escape(text: &str) -> String {
    text.replace('%', "%%").replace('$', "$$")
}

/// One word of an `ExecStart=` line: in double quotes, with backslashes and
/// quotes escaped (systemd's C-style escapes) and specifiers doubled.
fn systemd_quote(word: &str) -> String {
    let inner = systemd_escape(word).replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{inner}\"")
}

/// One argument as a Windows program's command line splits it (the rules
/// of `CommandLineToArgvW`): in double quotes when it has a space, tab or
/// quote, or is empty; backslashes doubled only before a quote.
fn windows_quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account {
            home: Some("/home/ann".into()),
            config_home: None,
            uid: Some(501),
            user: Some("CLINIC\\reception".into()),
        }
    }

    /// `base` with the `/`-separated `rest` joined as the system joins it.
    fn under(base: &str, rest: &str) -> PathBuf {
        rest.split('/').fold(PathBuf::from(base), |path, part| path.join(part))
    }

    fn made(manager: Manager) -> Entry {
        entry(
            manager,
            &account(),
            Path::new("/opt/clinic sync/clinicsync"),
            Path::new("/srv/100% \"front\"/$HOME/clinic.db"),
            "0a1b2c3d",
            "clinicsync for /srv/100% clinic.db",
            Path::new("/tmp"),
        )
        .unwrap()
    }

    #[test]
    fn the_systemd_unit_quotes_every_word_and_doubles_specifiers() {
        let e = made(Manager::Systemd);
        assert_eq!(
            e.file.as_deref(),
            Some(under("/home/ann", ".config/systemd/user/clinicsync-0a1b2c3d.service").as_path())
        );
        assert!(e.text.contains(
            r#"ExecStart="/opt/clinic sync/clinicsync" "--db" "/srv/100%% \"front\"/$$HOME/clinic.db" "run""#
        ));
        assert!(e.text.contains("Description=clinicsync for /srv/100%% clinic.db\n"));
        assert_eq!(
            e.register[1].args,
            ["systemctl", "--user", "enable", "--now", "clinicsync-0a1b2c3d.service"]
        );
        let with_xdg = Account { config_home: Some("/cfg".into()), ..account() };
        let e =
            entry(Manager::Systemd, &with_xdg, Path::new("/x"), Path::new("/d"), "k", "", Path::new("/t"))
                .unwrap();
        assert_eq!(e.file.as_deref(), Some(under("/cfg", "systemd/user/clinicsync-k.service").as_path()));
    }

    #[test]
    fn the_launchd_agent_escapes_its_strings_and_bootstraps_in_the_user_s_gui_domain() {
        let e = made(Manager::Launchd);
        assert_eq!(
            e.file.as_deref(),
            Some(under("/home/ann", "Library/LaunchAgents/org.clinicsync.0a1b2c3d.plist").as_path())
        );
        assert!(e.text.contains("<string>/srv/100% &quot;front&quot;/$HOME/clinic.db</string>"));
        assert_eq!(e.register[0].args[..3], ["launchctl", "bootstrap", "gui/501"]);
        assert_eq!(e.register[0].args[3], e.file.unwrap().into_os_string());
        assert_eq!(e.unregister[0].args, ["launchctl", "bootout", "gui/501/org.clinicsync.0a1b2c3d"]);
    }

    #[test]
    fn the_task_quotes_arguments_as_windows_splits_them_and_is_utf16() {
        let e = entry(
            Manager::TaskScheduler,
            &account(),
            Path::new(r"C:\Program Files\clinicsync\clinicsync.exe"),
            Path::new(r"C:\Clinic Data\clinic.db"),
            "0a1b2c3d",
            "clinicsync & co",
            Path::new(r"C:\Temp"),
        )
        .unwrap();
        assert!(
            e.text.contains(r#"<Command>&quot;C:\Program Files\clinicsync\clinicsync.exe&quot;</Command>"#)
        );
        assert!(e.text.contains(r#"<Arguments>--db &quot;C:\Clinic Data\clinic.db&quot; run</Arguments>"#));
        assert!(e.text.contains("<UserId>CLINIC\\reception</UserId>"));
        assert!(e.text.contains("<Description>clinicsync &amp; co</Description>"));
        assert_eq!(&e.bytes()[..4], &[0xFF, 0xFE, b'<', 0]);
        assert_eq!(e.register[0].args[..4], ["schtasks", "/Create", "/TN", r"clinicsync\0a1b2c3d"]);
    }

    #[test]
    fn windows_quoting_follows_command_line_to_argv() {
        assert_eq!(windows_quote(r"C:\a\b"), r"C:\a\b");
        assert_eq!(windows_quote(r"C:\my dir\"), r#""C:\my dir\\""#);
        assert_eq!(windows_quote(r#"a"b c"#), r#""a\"b c""#);
        assert_eq!(windows_quote(r#"a\"b"#), r#""a\\\"b""#);
        assert_eq!(windows_quote(""), r#""""#);
    }

    #[test]
    fn a_path_with_a_line_break_is_refused() {
        let r = entry(
            Manager::Systemd,
            &account(),
            Path::new("/x"),
            Path::new("/a\nb"),
            "k",
            "",
            Path::new("/t"),
        );
        assert!(r.unwrap_err().contains("control character"));
    }
}
