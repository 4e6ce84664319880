//! Serving many sequences from one model: a [`Scheduler`] that batches sequences joining and
//! leaving at any step, and a [`StateCache`] of conversation states keyed by token prefix.

pub mod cache;
pub mod scheduler;

pub use cache::{CacheStats, StateCache};
pub use scheduler::{Event, FinishReason, Scheduler, SchedulerConfig, SchedulerStats, SequenceId};
