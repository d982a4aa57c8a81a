//! Migrations as code: versioned files of Up and Down SQL (`files`), applied in order under a
//! lock with a history (`history`), each statement down the safe path for it (`route`): the
//! online engine for a large table's ALTER, a non-blocking index build, or directly under a
//! lock timeout (`runner`).

pub mod files;
pub mod history;
pub mod route;
pub mod runner;
pub mod session;
