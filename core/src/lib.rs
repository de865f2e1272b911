//! `backup-core`: the contracts every tool of the backup pipeline obeys
//! (docs/contracts.md, numbered as the modules cite them). No tool
//! re-implements one of these.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod exit;
pub mod fsutil;
pub mod k8s;
pub mod ledger;
pub mod lock;
pub mod log;
pub mod lvm;
pub mod marker;
pub mod metrics;
pub mod mirror_record;
pub mod out;
pub mod signals;
pub mod skiplist;
pub mod tracker_state;
pub mod weeks;

pub use exit::{Exit, ExitCode};
pub mod rsync_items;
pub mod root_guard;
