//! Layer 1: the shim's process-wide state and what every layer above needs from it: the mode
//! and hook depth (`state`), the hook bracket and the real functions (`interpose`), the app's
//! signal dispositions and the wrapper in front of its handlers (`sigview`), the controller
//! socket (`link`), the one-line fatal error (`fatal`), and what start-up reads once for every
//! epoch (`statics`). Imports only `kernel`.

pub mod environ;
pub mod fatal;
pub mod interpose;
pub mod link;
pub mod lock;
pub mod sigview;
pub mod state;
pub mod statics;
pub mod threads;
