//! `homelab-emu`: the multi-call test emulator of LVM (`lvs`, `lvcreate`,
//! `lvremove`, `lvrename`, `lvchange`), `kubectl`, `cryptsetup` and `blkid`
//! (stands for: the Proxmox host's device-mapper based storage and the
//! Kubernetes API, which the CI machine does not have). Called through
//! symlinks named after those commands; see `backup_tests::emu`.

fn main() {
    std::process::exit(backup_tests::emu::main_entry(std::env::args_os().collect()));
}
