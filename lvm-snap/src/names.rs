//! The naming scheme (which LVs are PVC volumes, our snapshots,
//! pre-restore copies and restore scratch volumes) lives in
//! `backup_core::lvm`, shared with pvc-copy; this module re-exports it
//! under lvm-snap's old paths and adds how `list` prints an age.

pub use backup_core::k8s::valid_name as k8s_name;
pub use backup_core::lvm::{
    Kind, STAMP_FMT, TAG, classify, is_origin, parse_stamp, pre_restore_name, pvc_like,
    restoring_name, safe_lvm_name, snapshot_name, stamp_of,
};

/// `XdYh` (the original `list` format), `-` for negative ages.
pub fn age_text(secs: i64) -> String {
    if secs < 0 {
        return "future".into();
    }
    let d = secs / 86_400;
    let h = (secs % 86_400) / 3600;
    let m = (secs % 3600) / 60;
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{m}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_the_original() {
        assert_eq!(age_text(3 * 86_400 + 5 * 3600 + 59), "3d5h");
        assert_eq!(age_text(2 * 3600 + 120), "2h2m");
        assert_eq!(age_text(59), "0m");
        assert_eq!(age_text(-1), "future");
    }
}
