//! clinicsync keeps the SQLite databases of several clinic sites in step
//! through a folder that a cloud-sync client already carries.
//!
//! See `ARCHITECTURE.md` for the map of modules; dependencies point down:
//! `cli` → `service` → `web` → `engine` → (`db`, `folder`) → (`xmlstore`,
//! `conflicts`, `changelog`) → `model` (the `tidy` test keeps it so).

pub mod changelog;
pub mod cli;
pub mod conflicts;
pub mod db;
pub mod engine;
pub mod folder;
pub mod model;
pub mod platform;
pub mod service;
pub mod web;
pub mod xmlstore;
