//! Test support for the end-to-end scenarios of the backup pipeline.

pub mod awkward_names;
pub mod emu;
pub mod harness;
pub mod pushgateway;
pub mod sshd;
pub mod stop;
pub mod nas;
pub mod unitfile;
pub mod without;
