//! The bottom layer: plain data every other layer shares (events, jobs, acknowledgement
//! handles and counters, configuration sections, the JSON limits, the live event stream's
//! messages) and leaf helpers with no state of their own (metrics names, crash points, hints).
//! Nothing here imports from another module of the crate.

pub mod ack;
pub mod chaos;
pub mod event;
pub mod events;
pub mod hints;
pub mod job;
pub mod json;
pub mod metrics;
pub mod rfc3339;
pub mod settings;
