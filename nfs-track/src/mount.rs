//! Is a path a mountpoint? Read from /proc/self/mountinfo, so a bind mount
//! (same st_dev as its parent) counts too.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Undo the octal escapes of mountinfo (`\040` for a space, ...).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Whether `path` (canonicalised by the caller when possible) is the
/// mount point of some mount in this process's namespace.
pub fn is_mountpoint_in(mountinfo: &[u8], path: &Path) -> bool {
    let want = path.as_os_str().as_bytes();
    mountinfo.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .is_some_and(|mp| unescape(mp) == want)
    })
}

pub fn is_mountpoint(path: &Path) -> bool {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    match std::fs::read("/proc/self/mountinfo") {
        Ok(info) => is_mountpoint_in(&info, &canon),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let info = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                     40 22 8:17 / /mnt/backup rw shared:9 - ext4 /dev/sdb1 rw\n\
                     41 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        assert!(is_mountpoint_in(info, Path::new("/mnt/backup")));
        assert!(is_mountpoint_in(info, Path::new("/mnt/with space")));
        assert!(is_mountpoint_in(info, Path::new("/")));
        assert!(!is_mountpoint_in(info, Path::new("/mnt")));
        assert!(!is_mountpoint_in(info, Path::new("/mnt/backup/sub")));
    }
}
