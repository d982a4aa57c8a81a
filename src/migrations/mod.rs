//! Migrations as code: versioned files of UP and DOWN SQL (`files`), applied in order with a
//! history, each ALTER online when it needs to be (issue 12, in steps: the files and `swivel
//! migrate new` first).

pub mod files;
