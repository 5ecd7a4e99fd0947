//! Shared listeners that dispatch to trigger actors.

pub mod body;
pub mod connections;
pub mod http;
pub mod listener;
