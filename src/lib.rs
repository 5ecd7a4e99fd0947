//! The service shell: loading `config.toml` (`config_file`: `${ENV}` substitution and errors
//! that name the file, line and key), the admin listener (`admin`), the whole application
//! (`app`) and tracing (`telemetry`). The actors live in `millgate-actors`.

pub mod admin;
pub mod app;
pub mod config_file;
pub mod telemetry;

pub use config_file::{
    load_file, load_str, substitute_env, warnings, ConfigFileError, LocatedError,
};
pub use telemetry::{init_tracing, LogFormat};

/// The default configuration, compiled in: runs with no external service.
pub const DEFAULT_CONFIG: &str = include_str!("../config.toml");
