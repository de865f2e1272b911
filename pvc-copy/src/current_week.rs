//! `pvc-copy current-week`: the week directory a run now writes.

use backup_core::exit::{Exit, ExitCode};
use chrono::{DateTime, Utc};

/// Prints the week a run at `now` (default: the real time) writes.
pub(crate) fn run(now: Option<&str>) -> anyhow::Result<ExitCode> {
    backup_core::outln!("{}", current_week(parse_now(now)?))?;
    Ok(ExitCode::Ok)
}

pub(crate) fn parse_now(s: Option<&str>) -> anyhow::Result<DateTime<Utc>> {
    match s {
        None => Ok(Utc::now()),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| Exit::usage(format!("--now {s:?}: expected an RFC 3339 time: {e}"))),
    }
}

/// The week a run at `now` writes (host local date; ISO week).
pub fn current_week(now: DateTime<Utc>) -> String {
    backup_core::weeks::week_key(now.with_timezone(&chrono::Local).date_naive())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn week_of_a_run_is_the_iso_week() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T05:00:00Z").expect("time");
        assert_eq!(current_week(t.with_timezone(&Utc)), "2026-W48");
    }
}
