//! Plain-text output for people: aligned tables, times, short ids.

use std::fmt::Write as _;

/// Prints rows as left-aligned columns separated by two spaces; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().filter_map(|row| row.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The first 8 characters of an id, as Nomad shows them.
pub fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// `2026-11-23T10:56:01Z` (UTC) from Unix milliseconds.
pub fn time(unix_millis: u64) -> String {
    if unix_millis == 0 {
        return "-".to_string();
    }
    let secs = unix_millis / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `snake_case` enum names as shown to people.
pub fn label<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

pub fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("API types serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_tables() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00Z");
        let rows = vec![vec!["ID".to_string(), "NAME".to_string()], vec!["abc".to_string(), "x".to_string()]];
        assert_eq!(table(&rows), "ID   NAME\nabc  x\n");
    }
}
