//! Crash points for crash tests: `MILLGATE_CRASH_AT=<name>` makes the process abort (no
//! unwinding, no flush: the same as `kill -9`) the first time it reaches that point. Tests use
//! it to crash between two writes whose order the delivery guarantee depends on, which an
//! external `kill -9` can only hit by luck. Unset, a crash point costs one cached lookup.

use std::sync::OnceLock;

static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();

/// Aborts the process if `MILLGATE_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    let armed = CRASH_AT.get_or_init(|| std::env::var("MILLGATE_CRASH_AT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("millgate: crash point `{name}` reached (MILLGATE_CRASH_AT); aborting");
        std::process::abort();
    }
}
