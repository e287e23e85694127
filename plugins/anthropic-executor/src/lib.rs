//! Serves OpenAI Chat Completions requests from an Anthropic Messages API upstream.
//!
//! For now the crate holds only [`translate`]: pure conversions between the two wire formats.
//! The plugin that calls an upstream with them comes later.

pub mod translate;
