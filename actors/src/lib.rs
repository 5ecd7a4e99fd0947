//! millgate's actors: everything that runs as an actor, and the data that flows between them.
//!
//! Data path: source → trigger actor → [`intake::Intake`] (dedup, preprocessor, durable queue)
//! → [`router::JobRouter`] → runner pool → outcome → acknowledgement.
//!
//! The modules form layers, each importing only from the ones listed before it (docs/
//! architecture.md draws them; tests/layering.rs checks them):
//! [`model`] (plain data), [`process`] and [`http_auth`] (leaves), [`store`], [`preprocess`], [`runners`], [`router`], [`intake`],
//! [`triggers`] (the kinds), then [`config`], [`supervisor`], [`ingress`], [`service`].

pub mod http_auth;
pub mod model;
pub mod process;

pub mod store;

pub mod preprocess;

pub mod runners;

pub mod router;

pub mod intake;

pub mod triggers;

pub mod config;
pub mod ingress;
pub mod service;
pub mod supervisor;

// The data types under their familiar names, for the shell and the tests.
pub use config::Config;
pub use model::{ack, chaos, event, events, hints, job, json, metrics};
pub use service::{Service, ServiceError};
