//! Small helpers the owner commands share for reading and printing times and amounts.

use std::time::{SystemTime, UNIX_EPOCH};

use opentab_core::Usdc;

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Parses `30s`, `30m`, `24h`, `7d` or `2w` into seconds (clap value parser of `--expires-in`).
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30m, 24h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?} needs a unit: s, m, h, d or w (30m, 24h, 7d)")),
    };
    match number.checked_mul(unit) {
        Some(0) => Err("the duration must be more than zero".to_owned()),
        Some(secs) => Ok(secs),
        None => Err(format!("{text:?} is too long")),
    }
}

/// Parses a USDC amount written in whole USDC (`25`, `0.5`) (clap value parser).
pub(crate) fn parse_usdc(text: &str) -> Result<Usdc, String> {
    let amount = Usdc::parse_decimal(text.trim()).map_err(|e| e.to_string())?;
    if amount == Usdc::ZERO {
        return Err("the amount must be more than zero".to_owned());
    }
    Ok(amount)
}

/// `5 USDC`, `0.25 USDC`.
pub(crate) fn usdc(amount: Usdc) -> String {
    format!("{} USDC", amount.display())
}

/// `2025-06-01 12:00:00 UTC` for unix seconds `at`.
pub(crate) fn utc(at: u64) -> String {
    let days = at / 86_400;
    let secs = at % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3_600, secs / 60 % 60, secs % 60)
}

/// `in 6d 23h`, `3m ago`: how far `at` is from `now`, to the two largest units.
pub(crate) fn relative(at: u64, now: u64) -> String {
    if at >= now { format!("in {}", span(at - now)) } else { format!("{} ago", span(now - at)) }
}

/// `utc(at) (relative)`.
pub(crate) fn when(at: u64, now: u64) -> String {
    format!("{} ({})", utc(at), relative(at, now))
}

fn span(secs: u64) -> String {
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    let mut left = secs;
    for (name, size) in units {
        if left >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", left / size));
            left %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes `rows` as columns separated by two spaces, each as wide as its widest cell.
pub(crate) fn table(out: &mut impl std::io::Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("30m"), Ok(1_800));
        assert_eq!(parse_duration("45s"), Ok(45));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("1y").is_err());
    }

    #[test]
    fn times_print_as_utc_and_relative() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_748_779_200), "2025-06-01 12:00:00 UTC");
        assert_eq!(relative(1_000 + 3_600 + 120, 1_000), "in 1h 2m");
        assert_eq!(relative(1_000, 1_000 + 7 * 86_400 + 5), "7d 5s ago");
        assert_eq!(relative(1_000, 1_000), "in 0s");
    }

    #[test]
    fn amounts_parse_as_whole_usdc() {
        assert_eq!(parse_usdc("25"), Ok(Usdc::from_base_units(25_000_000)));
        assert_eq!(parse_usdc("0.5"), Ok(Usdc::from_base_units(500_000)));
        assert!(parse_usdc("0").is_err());
        assert!(parse_usdc("-1").is_err());
    }
}
