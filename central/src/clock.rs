//! Time as central stores and shows it: Unix milliseconds in the database and on the wire,
//! RFC 3339 UTC (millisecond precision) for people and exports.

/// Current Unix time in milliseconds (0 if the clock reads before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC time of Unix milliseconds; times before 1970 are shown as the epoch.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `YYYY-MM-DD` of a day number (days since the Unix epoch).
pub fn day(days: i64) -> String {
    rfc3339(days * 86_400_000).chars().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(1_000), "1970-01-01T00:00:01.000Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(20_000), "2024-10-04");
    }
}
