//! `offsite-sync init`: the identity markers (contract 13).

use anyhow::Result;
use backup_core::exit::Exit;
use backup_core::info;
use backup_core::log::p;

use crate::{Config, is_mountpoint, nas};

/// `offsite-sync init`: give the backup root its identity marker and,
/// unless `local`, each NAS destination its own (contract 13), recording
/// the NAS ids this backup disk expects. Idempotent: an existing marker of
/// the same role is kept (and adopted when none is recorded); a different
/// one is never overwritten (exit 5).
pub fn init(cfg: &Config, local: bool) -> Result<()> {
    use backup_core::marker::{self, Init, ROLE_BACKUP_ROOT};
    let root = &cfg.backup_root;
    if cfg.require_mountpoint && !is_mountpoint(root) {
        return Err(Exit::refused(format!(
            "backup root {} is not a mountpoint: no marker written",
            p(root)
        )));
    }
    if cfg.dry_run {
        // Contract 11: say what would be done, change nothing.
        match marker::read(root)? {
            Some(m) => info!(
                "{}: identified as {:?} (id {}): left as it is (dry run)",
                p(root),
                m.role,
                m.id
            ),
            None => info!("{}: would write a backup-root marker (dry run)", p(root)),
        }
    } else {
        match marker::init(root, ROLE_BACKUP_ROOT)? {
            Init::Created(m) => info!("{}: backup-root marker written (id {})", p(root), m.id),
            Init::Existing(m) => info!(
                "{}: already initialised (id {}, created {}): left as it is",
                p(root),
                m.id,
                m.created
            ),
        }
    }
    if local {
        return Ok(());
    }
    nas::init(cfg)
}
