//! The gateway as a library: config, plugin loading, the request pipeline and the HTTP server.
//! `main.rs` only parses the command line and calls in here.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod collector;
pub mod command;
pub mod config;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod record;
pub mod reload;
pub mod routes;
pub mod run;
pub mod scaffold;
pub mod server;
pub mod services;
pub mod telemetry;
pub mod ui;
pub mod upstream;
