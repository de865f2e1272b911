//! Shared pieces of nfs-mirror's tests.
#![allow(dead_code)]

pub mod stop;
