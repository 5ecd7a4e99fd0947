//! Kinds that fire on a clock rather than on a message: `schedule` (a job per cron fire time)
//! and `poll` (a program run per fire time whose output becomes events, with saved state).
//! Both run on the timer actor in `schedule.rs` and share the cron parser in `cron.rs`.

pub mod cron;
pub mod poll;
pub mod schedule;
