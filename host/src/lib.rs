//! The gateway as a library: config, plugin loading, the request pipeline and the HTTP server.
//! `main.rs` only parses the command line and calls in here.
#![forbid(unsafe_code)]

pub mod config;
pub mod logging;
pub mod plugin;
