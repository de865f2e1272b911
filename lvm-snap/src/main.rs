//! lvm-snap: thin snapshots of every PVC volume (see `lvm-snap --help`).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match backup_core::config::try_parse_from::<lvm_snap::Cli, _, _>("lvm-snap", &args) {
        Ok(cli) => cli,
        Err(e) => {
            // A bad flag or env value is still a run the metrics must show.
            if e.use_stderr() {
                lvm_snap::write_usage_metrics(&args);
            }
            backup_core::exit::usage_exit("lvm-snap", &e)
        }
    };
    backup_core::exit::run_main("lvm-snap", || lvm_snap::run(cli));
}
