//! remusd and remusctl: everything that can happen outside the protected process.

pub mod image;
pub mod restore;
