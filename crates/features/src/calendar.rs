//! UTC calendar fields from epoch milliseconds, without a date-time dependency on the hot path.

/// (hour of day as a fraction 0..24, day of week 0 = Monday, month 1..=12)
pub fn fields(ts_ms: i64) -> (f64, u32, u32) {
    let day_ms = 86_400_000;
    let days = ts_ms.div_euclid(day_ms);
    let ms_of_day = ts_ms.rem_euclid(day_ms);
    let hour = ms_of_day as f64 / 3_600_000.0;
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let dow = (days + 3).rem_euclid(7) as u32;
    (hour, dow, month_of(days))
}

/// Month (1..=12) of a day count since the epoch (proleptic Gregorian calendar).
fn month_of(days: i64) -> u32 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    if mp < 10 {
        (mp + 3) as u32
    } else {
        (mp - 9) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        // 2013-06-30T22:03:24Z, a Sunday
        let (h, dow, m) = fields(1_372_629_804_000);
        assert!((h - 22.0566).abs() < 1e-3);
        assert_eq!((dow, m), (6, 6));
        // 2024-02-29T00:00:00Z, a Thursday
        assert_eq!(fields(1_709_164_800_000).1, 3);
        assert_eq!(fields(1_709_164_800_000).2, 2);
        // 2000-01-01, a Saturday
        assert_eq!(fields(946_684_800_000).1, 5);
        assert_eq!(fields(946_684_800_000).2, 1);
    }
}
