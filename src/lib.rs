//! A drop-in `nbdkit`: an NBD (Network Block Device) server that serves
//! disks from plugins, written in Rust.
//!
//! Layout (one place per responsibility):
//! - [`protocol`]: the NBD wire protocol as a pure codec (bytes in, messages out).
//! - [`plugin`], [`filter`], [`layers`]: the plugin and filter interfaces and
//!   the chain of layers the server drives.
//! - [`plugins`], [`filters`]: one file per plugin and per filter.
//! - [`server`]: listeners, connections, handshake, request dispatch, shutdown.
//! - [`cli`], [`app`]: the command line and the startup sequence.

pub mod app;
pub mod cli;
pub mod error;
pub mod extents;
pub mod filter;
pub mod filters;
pub mod layers;
pub mod log;
pub mod parse;
pub mod password;
pub mod plugin;
pub mod plugins;
pub mod protocol;
pub mod server;

/// The nbdkit version we implement (reported by `--version`, `--dump-config`).
pub const VERSION: &str = "1.46.0";
/// Marks our build in `--version` and `--dump-config` (`version_extra`).
pub const VERSION_EXTRA: &str = "rust";
