//! Shared listeners that dispatch to trigger actors.

pub mod http;
