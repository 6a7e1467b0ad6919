//! Helpers shared by the integration tests and benchmarks: locating the built binaries,
//! starting a standby and a protected program, and reading `remusctl status --json`.
