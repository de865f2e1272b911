//! offsite-sync: the backup disk and the `direct` NFS trees to the NAS.
//!
//! Step 1 consumes `.changed-files` (leg 1, relative to the backup root),
//! step 2 `.nfs-changes.log` (leg 2, absolute paths) by the core ledger
//! protocol: the batch is committed (its inflight file deleted) only after
//! the transfer succeeded, so a failure or a kill at any instant loses no
//! entry. Full passes (`--delete`) run when due, asked for or marked, and
//! are guarded like nfs-mirror: a missing, unmounted or empty source never
//! deletes anything on the NAS, and a dry run bounds the deletions.
//!
//! Guards hold while acting (contract 12): the deleting transfer carries
//! rsync's own `--max-delete`, the source guard is checked again right
//! before it, and the deletions reported are those rsync itemized. A
//! batch is committed only when every listed entry was itemized (sent or
//! up to date) or has vanished, and the source root is still the
//! filesystem (device) it was at the start. Identity markers (contract
//! 13): the backup root and each NAS destination must carry the marker
//! `offsite-sync init` wrote ([`nas`]); the NAS ones are checked before
//! any step and again in each transfer's own connection.
//!
//! Modules: [`config`] (settings and the rsync/ssh commands), [`guard`]
//! (the source guard and root identities), `transfer` (the deleting
//! transfer with its bound, the listed one), `schedule` (when a full pass
//! is due), [`step1`](mod@step1) and [`step2`](mod@step2) (each with its full pass and its
//! incremental run), [`steps`] (the step subcommands: gate, steps, metrics,
//! report), [`status`](mod@status), [`init`](mod@init), [`coverage`] and [`nas`].

pub mod capacity;
pub mod config;
pub mod coverage;
pub mod guard;
pub mod init;
mod metrics;
pub mod nas;
pub mod resolve;
pub mod steps;
mod schedule;
pub mod status;
pub mod step1;
pub mod step2;
mod transfer;

pub use capacity::{Capacity, capacity, parse_df};
pub use config::{CHMOD, Config, FullMode, STATE_EXCLUDES};
pub use guard::{dev_of, is_mountpoint};
pub use init::init;
pub use status::{LedgerStatus, Status, status};
pub use step1::step1;
pub use step2::step2;
pub use steps::{StepReport, run_steps};
