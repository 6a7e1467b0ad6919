//! Layer 0: the kernel interfaces the shim uses, and nothing of the shim's own state. Raw
//! system calls (no glibc where glibc could take a lock or be a hooked path), userfaultfd,
//! `PAGEMAP_SCAN`, `PROCMAP_QUERY`, the resume-point assembly, the procfs text parser and the
//! async-signal-safe line buffer. Modules here import only each other.

pub mod context;
pub mod line;
pub mod pagemap;
pub mod procmap;
pub mod sys;
pub mod text;
pub mod uffd;
