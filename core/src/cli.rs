//! Flags every tool shares (flatten into each tool's clap parser).

use std::path::PathBuf;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct Common {
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Debug output on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Write this run's figures here (Prometheus text format, atomically).
    #[arg(long, global = true, env = "METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Print every effective setting, its value and where it came from
    /// (flag, env, configuration file:line, default), then exit 0.
    #[arg(long, global = true)]
    pub show_config: bool,
}

impl Common {
    /// Apply `-q`/`-v` to the logger.
    pub fn init_logging(&self) {
        crate::log::init(self.quiet, self.verbose);
    }

    /// Write the metrics file if one was asked for. A failure here is
    /// logged, not fatal: the run's own result must still be reported.
    pub fn write_metrics(&self, m: &crate::metrics::Metrics) -> bool {
        let Some(path) = &self.metrics_file else {
            return true;
        };
        match m.write_to(path) {
            Ok(()) => true,
            Err(e) => {
                crate::log::emit(
                    crate::log::Level::Error,
                    &format!("cannot write metrics file: {e}"),
                );
                false
            }
        }
    }
}

/// Parse a duration such as `90s`, `30m`, `26h`, `7d`, `2w` or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 26h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be s, m, h, d or w"
            ));
        }
    };
    Ok(std::time::Duration::from_secs(n * mult))
}

/// Parse a size in bytes such as `32MiB`, `16GiB`, `512KiB`, `4096` (plain
/// bytes); `K`/`M`/`G`/`T` with or without `iB` are binary units too.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 32MiB, 16GiB or bytes"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unit must be KiB, MiB, GiB or TiB"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("invalid size {s:?}: expected a positive size below 16 EiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 apples").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("26h"),
            Ok(std::time::Duration::from_secs(93_600))
        );
        assert_eq!(
            parse_duration("300"),
            Ok(std::time::Duration::from_secs(300))
        );
        assert_eq!(parse_duration("30d").map(|d| d.as_secs()), Ok(2_592_000));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
