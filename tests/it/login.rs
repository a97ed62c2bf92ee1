//! `clinicsync service install | uninstall | status` as a process on Linux:
//! the systemd user unit is written where systemd reads it and checked by
//! `systemd-analyze verify`, the manager is told to reload and enable it,
//! a failed enable leaves nothing behind, `status` tells a running service
//! by its lock, and `uninstall` removes the unit. This machine has no
//! systemd user manager (no session bus), so `systemctl` is a stand-in
//! script on PATH that records what it was asked; the launchd and Task
//! Scheduler definitions are tested in the unit tests of `platform::login`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::service::Service;
use crate::support::*;

/// A home folder and a PATH whose `systemctl` appends its arguments to
/// `systemctl.log` and exits with `exit_code`.
struct Login {
    home: tempfile::TempDir,
    bin: PathBuf,
}

impl Login {
    fn new(exit_code: i32) -> Login {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = home.path().join("systemctl.log");
        let script = format!(
            "#!/bin/sh\necho \"$*\" >>'{}'\n[ {exit_code} -eq 0 ] || echo 'Failed to connect to bus: No medium found' >&2\nexit {exit_code}\n",
            log.display()
        );
        let systemctl = bin.join("systemctl");
        std::fs::write(&systemctl, script).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        Login { home, bin }
    }

    fn run(&self, db: &Path, args: &[&str]) -> (i32, String, String) {
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        let out = cli(db)
            .arg("service")
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("PATH", path)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn asked(&self) -> Vec<String> {
        std::fs::read_to_string(self.home.path().join("systemctl.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn units(&self) -> Vec<PathBuf> {
        let dir = self.home.path().join(".config/systemd/user");
        let mut all: Vec<PathBuf> =
            std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        all.sort();
        all
    }
}

#[test]
fn install_writes_a_unit_systemd_accepts_enables_it_and_uninstall_removes_it() {
    let family = Family::new();
    // A path with a space and a `%`, which systemd would expand.
    let db = family.dir.path().join("front desk 100%.db");
    cli(&db).args(["init", "--folder"]).arg(family.folder()).assert().success();
    let login = Login::new(0);

    let (code, dry, _) = login.run(&db, &["install", "--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    assert!(dry.contains("Would install a systemd user unit named clinicsync-"), "{dry}");
    assert!(login.units().is_empty() && login.asked().is_empty(), "a dry run changes nothing");

    let (code, out, err) = login.run(&db, &["install"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("Installed a systemd user unit named clinicsync-"), "{out}");
    assert!(out.trim_end().ends_with("It runs now."), "{out}");
    let units = login.units();
    assert_eq!(units.len(), 1, "{units:?}");
    let unit = std::fs::read_to_string(&units[0]).unwrap();
    assert!(dry.contains(&unit), "the dry run printed the unit that was installed:\n{dry}\n---\n{unit}");
    let exec = format!("\"--db\" \"{}\" \"run\"", db.display().to_string().replace('%', "%%"));
    assert!(unit.contains(&exec), "{unit}");
    let name = units[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(login.asked(), ["--user daemon-reload".to_owned(), format!("--user enable --now {name}")]);

    // systemd's own parser accepts the unit, and finds the program it starts.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&units[0])
        .output()
        .expect("systemd-analyze (Debian's systemd package) checks the unit");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let (code, out, _) = login.run(&db, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("Starts at login: yes, as a systemd user unit named"), "{out}");
    assert!(out.contains("Running now: no."), "{out}");

    // Running is told by the service's own lock, whoever started it.
    let service = Service::start(&db);
    let (code, out, _) = login.run(&db, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("Running now: yes."), "{out}");
    // Installed again while one runs by hand: replaced, and it says the
    // one at login takes over later.
    let (code, out, _) = login.run(&db, &["install"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Replaced a systemd user unit"), "{out}");
    assert!(out.contains("A clinicsync run started by hand holds this database now"), "{out}");
    let (status, _) = service.stop();
    assert!(status.success());
    assert_eq!(
        login.asked()[2..4],
        [format!("--user disable --now {name}"), "--user daemon-reload".to_owned()]
    );

    let (code, out, _) = login.run(&db, &["uninstall"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("Removed a systemd user unit"), "{out}");
    assert!(login.units().is_empty());
    assert_eq!(login.asked().last().unwrap(), "--user daemon-reload");
    let (code, out, _) = login.run(&db, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("Starts at login: no"), "{out}");
    let (code, out, _) = login.run(&db, &["uninstall"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Nothing to remove"), "{out}");
}

#[test]
fn a_manager_that_refuses_leaves_nothing_installed_and_the_error_says_what_it_said() {
    let (_family, db, _) = two_sites();
    let login = Login::new(1);
    let (code, out, err) = login.run(&db, &["install"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("a systemd user unit was not installed: `systemctl --user daemon-reload` failed")
            && err.contains("Failed to connect to bus"),
        "{err}"
    );
    assert!(login.units().is_empty(), "the unit written is removed again");

    // Without the manager at all (no systemctl on PATH), an installed
    // unit is still removed: nothing can be running under it.
    let good = Login::new(0);
    let (code, _, _) = good.run(&db, &["install"]);
    assert_eq!(code, 0);
    let installed = good.units();
    assert_eq!(installed.len(), 1);
    let out = cli(&db)
        .args(["service", "uninstall"])
        .env("HOME", good.home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(good.units().is_empty(), "the unit file is removed");

    // A file that is not a clinicsync database is refused before anything.
    let stray = login.home.path().join("not-a-clinic.db");
    let (code, _, err) = login.run(&stray, &["install"]);
    assert_eq!(code, 1);
    assert!(err.contains("not-a-clinic.db"), "{err}");
    assert!(login.units().is_empty());
}
