//! Layer 5: the shim's lifecycle. Start-up from the constructor (`init`: which process is
//! protected, the kernel probe, the staging area, `remusd primary`), the held stdio streams set
//! up at start (`output`), and protecting a restored process again (`rejoin`). Imports every
//! layer below; nothing imports it.

pub mod init;
pub mod output;
pub mod probe;
pub mod rejoin;
