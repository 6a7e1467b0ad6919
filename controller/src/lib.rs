//! remusd and remusctl: everything that can happen outside the protected process.

pub mod control;
pub mod files;
pub mod image;
pub mod logging;
pub mod net;
pub mod persist;
pub mod primary;
pub mod restore;
pub mod standby;
pub mod sys;
pub mod tcp;
pub mod wire;
