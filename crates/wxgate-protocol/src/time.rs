//! WeChat's calendar. Daily quotas reset at 00:00 Beijing time (UTC+8); minute quotas at the
//! start of each calendar minute.

/// Beijing time is UTC+8 all year (no daylight saving).
pub const BEIJING_OFFSET_MS: u64 = 8 * 3600 * 1000;
const DAY_MS: u64 = 86_400_000;
const MINUTE_MS: u64 = 60_000;

/// The Beijing calendar day number (days since 1970-01-01 in UTC+8) of a unix time in ms.
pub fn beijing_day(unix_ms: u64) -> u64 {
    (unix_ms + BEIJING_OFFSET_MS) / DAY_MS
}

/// Unix ms of the next 00:00 Beijing time strictly after `unix_ms`.
pub fn next_beijing_midnight_ms(unix_ms: u64) -> u64 {
    (beijing_day(unix_ms) + 1) * DAY_MS - BEIJING_OFFSET_MS
}

/// The calendar minute number of a unix time in ms.
pub fn minute(unix_ms: u64) -> u64 {
    unix_ms / MINUTE_MS
}

/// Unix ms of the start of the next calendar minute strictly after `unix_ms`.
pub fn next_minute_ms(unix_ms: u64) -> u64 {
    (minute(unix_ms) + 1) * MINUTE_MS
}

/// `YYYYMMDD` of the Beijing calendar day containing `unix_ms` (used in key names and messages).
pub fn beijing_yyyymmdd(unix_ms: u64) -> String {
    let days = beijing_day(unix_ms) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}

/// `2026-11-27T16:00:00Z` for a unix time in ms (second precision, UTC).
pub fn utc_rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_day_turns_at_16_00_utc() {
        // 2026-11-26T15:59:59.999Z is 23:59:59.999 in Beijing; one ms later is the next day.
        let before = 1_795_708_799_999;
        assert_eq!(beijing_yyyymmdd(before), "20261126");
        assert_eq!(beijing_yyyymmdd(before + 1), "20261127");
        assert_eq!(next_beijing_midnight_ms(before), before + 1);
        assert_eq!(
            next_beijing_midnight_ms(before + 1),
            before + 1 + 86_400_000
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(utc_rfc3339(1_795_708_800_000), "2026-11-26T16:00:00Z");
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn minutes() {
        assert_eq!(next_minute_ms(0), 60_000);
        assert_eq!(next_minute_ms(59_999), 60_000);
        assert_eq!(next_minute_ms(60_000), 120_000);
    }
}
