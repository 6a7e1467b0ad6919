//! The arbiter: etcd decides who runs the program (issue 14).
//!
//! Two hosts alone cannot tell a dead peer from a cut link. With `--etcd`, the primary holds
//! a leader key (`PREFIX/leader`) under a lease that it keeps alive, and the standby takes
//! over only once it has acquired that key itself, so only after the primary's lease expired
//! or was revoked. The primary releases held output only while its lease is certainly valid
//! by its own monotonic clock ([`lease::LeaseGate`]), and stops its program when etcd says
//! the lease is gone.
//!
//! - [`config`]: the endpoints, the prefix, the TTL and the keys derived from them;
//! - [`etcd`]: the etcd client (async, tokio) on a small dedicated thread behind a typed,
//!   synchronous interface ([`etcd::Etcd`]): the rest of the controller is threads;
//! - [`lease`]: a lease that holds the leader key, kept alive by a thread of its own, and the
//!   gate that output release reads;
//! - [`campaign`]: the standby's attempts to acquire the key after it lost its primary.
//!
//! ```text
//! primary:  grant lease -> txn(leader absent) put leader, delete obsolete -> keepalive every TTL/3
//!                                                     \-> revoke at a planned exit
//! standby:  primary lost -> txn(leader absent) put leader (own lease), get obsolete -> take over
//! ```

pub mod campaign;
pub mod config;
pub mod etcd;
pub mod lease;

pub use config::ArbiterConfig;
pub use etcd::{ArbiterError, Etcd};
pub use lease::{LeaseGate, LeaseHolder};
