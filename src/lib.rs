//! swivel: online schema changes for PostgreSQL and MySQL/MariaDB.
//!
//! The pipeline: [`plan`] → shadow table → [`copy`] ∥ tail and apply → cut-over → cleanup,
//! driven by [`migrate`] over a [`backend::Backend`]; the copy/replay protocol is in
//! [`watermark`].

pub mod backend;
pub mod copy;
pub mod error;
pub mod migrate;
pub mod mysql;
pub mod options;
pub mod plan;
pub mod postgres;
pub mod progress;
pub mod replay;
pub mod watermark;

pub use error::{Error, Result};
pub use migrate::{run, Outcome};
pub use options::RunOptions;
