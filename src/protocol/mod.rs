//! The NBD wire protocol as a pure codec.
