//! The engine: [`plan`] the ALTER, then [`migrate`] drives a [`backend::Backend`] through shadow
//! → [`copy`] ∥ tail and apply ([`replay`], under the [`watermark`] protocol) → [`checksum`] → [`cutover`] →
//! cleanup, counting in [`progress`].

pub mod backend;
pub mod checkpoint;
pub mod checksum;
pub mod copy;
pub mod cutover;
pub mod migrate;
pub mod plan;
pub mod progress;
pub mod replay;
pub mod watermark;
