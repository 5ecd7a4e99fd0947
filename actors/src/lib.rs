//! millgate's actors: everything that runs as an actor, and the data that flows between them.
//!
//! Data path: source → trigger actor → [`triggers::Intake`] (dedup, preprocessor pool, durable
//! queue) → [`router::JobRouter`] → runner pool → outcome → acknowledgement.

pub mod chaos;
pub mod config;
pub mod event;
pub mod events;
pub mod hints;
pub mod ingress;
pub mod intake;
pub mod job;
pub mod json;
pub mod metrics;
pub mod preprocess;
pub mod router;
pub mod runners;
pub mod service;
pub mod store;
pub mod supervisor;
pub mod triggers;

pub use config::Config;
pub use service::{Service, ServiceError};
