//! Layer 2: the trackers, the bookkeeping the hooks keep and the epoch reads: dirty pages
//! (`pages`: userfaultfd or mprotect, and the pre-faulting helpers), the sockets' output log and
//! descriptor table (`sockets`), the regular files' dirty ranges (`files`), listen backlogs
//! (`backlog`). Imports `base` and `kernel` only.

pub mod backlog;
pub mod files;
pub mod handover;
pub mod pages;
pub mod sockets;
