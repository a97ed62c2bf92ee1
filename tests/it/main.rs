//! The integration tests: one binary (faster to build on two cores), one
//! module per subject. Every test uses real SQLite files in a real temp
//! directory; the CLI tests run the built `clinicsync` as a process.

// They use FIFOs, symlinks, Unix permissions and signals, real Syncthing
// and rclone: Unix only. The Windows build runs its unit tests and a
// two-site flow under Wine (tests/windows).
#![cfg(unix)]
// The tests are the world outside clinicsync: they read the real clock to
// make stamps and to bound how long they wait.
#![allow(clippy::disallowed_methods)]

mod app_writer;
mod baseline;
mod browser;
mod changelog;
mod conflict_copies;
mod conflict_names;
mod conflict_records;
mod crash;
mod damaged_files;
mod deletions;
mod detach;
mod documents;
mod format;
mod guard;
mod held_files;
mod history;
mod hostile;
mod hostile_mutations;
mod hostile_set;
mod login;
mod maintenance;
mod mapping;
mod model_laws;
mod only;
mod realsync;
mod service;
mod settings;
mod sim;
mod support;
mod tidy;
mod two_sites;
mod verify;
mod webdriver;
