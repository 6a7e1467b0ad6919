//! Layer 3: the epoch. Everything here runs in the epoch signal handler (the capture of memory,
//! descriptors, kernel objects and files, and the restored process's first steps), and nothing
//! here runs anywhere else. Imports the trackers, `base` and `kernel`.

pub mod capture;
pub mod fds;
pub mod files;
pub mod handler;
pub mod kobj;
pub mod profile;
pub mod rendezvous;
pub mod restored;
pub mod stdio;
