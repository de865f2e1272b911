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

/// What a duration flag accepts, for error messages.
const DURATION_FORMS: &str = "expected a number with a unit (ms, s, m, h, d, w), e.g. 200ms, 90s, 5m, 26h, 7d, 2w or 1h30m; a bare number is seconds";

/// Parse a duration: a number and a unit from milliseconds to weeks
/// (`200ms`, `90s`, `30m`, `26h`, `7d`, `2w`), combinations (`1h30m`,
/// `1h 30m`) and a bare number, which is seconds (`300` = `300s`, as it
/// always was). Units are [humantime]'s (`min`, `hours`, `days`... too);
/// months and years are refused (`M` next to `m` is a trap, and no
/// interval here is that long).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|_| format!("invalid duration {s:?}: too large"));
    }
    let units = t
        .split(|c: char| !c.is_alphabetic())
        .filter(|u| !u.is_empty());
    for u in units {
        if matches!(
            u,
            "M" | "month" | "months" | "y" | "yr" | "yrs" | "year" | "years"
        ) {
            return Err(format!(
                "invalid duration {s:?}: unit {u:?} (months, years) is not accepted; {DURATION_FORMS}"
            ));
        }
    }
    humantime::parse_duration(t).map_err(|e| {
        use humantime::DurationError as E;
        let why = match e {
            E::UnknownUnit { unit, .. } if unit.is_empty() => "a unit is missing".to_string(),
            E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            E::InvalidCharacter(at) | E::NumberExpected(at) => {
                format!("unexpected character at byte {at}")
            }
            E::NumberOverflow => "too large or too precise".to_string(),
            E::Empty => "empty".to_string(),
        };
        format!("invalid duration {s:?}: {why}; {DURATION_FORMS}")
    })
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
        let d = |s| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(d("200ms"), Ok(200));
        assert_eq!(d("1s"), Ok(1_000));
        assert_eq!(d("5m"), Ok(300_000));
        assert_eq!(d("2h"), Ok(7_200_000));
        assert_eq!(d("1d"), Ok(86_400_000));
        assert_eq!(d("1w"), Ok(604_800_000));
        assert_eq!(d("1h30m"), Ok(5_400_000));
        assert_eq!(d("1h 30m"), Ok(5_400_000));
        assert_eq!(d("1s 500ms"), Ok(1_500));
        assert_eq!(d(" 15min "), Ok(900_000));
        // Every form the units, scripts and tests used before.
        assert_eq!(d("26h"), Ok(93_600_000));
        assert_eq!(d("30d"), Ok(2_592_000_000));
        assert_eq!(d("300s"), Ok(300_000));
        assert_eq!(d("300"), Ok(300_000));
        assert_eq!(d("0"), Ok(0));
        assert_eq!(d("0s"), Ok(0));
        for bad in [
            "soon",
            "",
            "5y",
            "1M",
            "2 months",
            "-1s",
            "1.5.3h",
            "99999999999999999999",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.starts_with(&format!("invalid duration {bad:?}")), "{e}");
        }
        let e = parse_duration("5x").expect_err("5x");
        assert!(
            e.contains("200ms") && e.contains("bare number is seconds"),
            "{e}"
        );
        let e = parse_duration("3M").expect_err("3M");
        assert!(e.contains("months"), "{e}");
        assert_eq!(d("1.5h"), Ok(5_400_000));
        let e = parse_duration("1.5").expect_err("1.5");
        assert!(e.contains("a unit is missing"), "{e}");
        let e = parse_duration("200 parsecs").expect_err("parsecs");
        assert!(e.contains("unknown unit \"parsecs\""), "{e}");
    }
}
