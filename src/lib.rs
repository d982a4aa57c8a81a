//! swivel: online schema changes for PostgreSQL and MySQL/MariaDB.
//!
//! The rooms: [`engine`] (plan → shadow → copy ∥ tail and apply → cut-over → cleanup, over the
//! [`engine::backend::Backend`] trait), [`control`] (steering a running migration: socket,
//! throttler, hooks), and one backend per server family, [`postgres`] and [`mysql`].

pub mod control;
pub mod engine;
pub mod error;
pub mod lint;
pub mod migrations;
pub mod mysql;
pub mod options;
pub mod postgres;

pub use engine::migrate::{run, Outcome};
pub use error::{Error, Result};
pub use options::RunOptions;
