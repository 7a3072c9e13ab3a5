//! `strftime` in the C locale for the `strftime_now` global of chat templates (the date a
//! template writes into its system prompt).

use std::fmt::Write as _;

/// A UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Year, e.g. 2026.
    pub year: i32,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day of the month, 1 to 31.
    pub day: u32,
    /// Hour, 0 to 23.
    pub hour: u32,
    /// Minute.
    pub minute: u32,
    /// Second.
    pub second: u32,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

impl DateTime {
    /// Midnight of `YYYY-MM-DD`; `None` if the text is not such a date.
    pub fn parse_date(text: &str) -> Option<DateTime> {
        let mut it = text.trim().splitn(3, '-');
        let year: i32 = it.next()?.parse().ok()?;
        let month: u32 = it.next()?.parse().ok()?;
        let day: u32 = it.next()?.parse().ok()?;
        let dim = [
            31,
            if is_leap(year) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&month) || day == 0 || day > dim[month as usize - 1] {
            return None;
        }
        Some(DateTime {
            year,
            month,
            day,
            hour: 0,
            minute: 0,
            second: 0,
        })
    }

    /// The current UTC time.
    pub fn now() -> DateTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let days = secs.div_euclid(86400);
        let rem = secs.rem_euclid(86400);
        // Civil date from days (the inverse of `days_from_civil`).
        let z = days + 719468;
        let era = z.div_euclid(146097);
        let doe = z - era * 146097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    fn weekday(&self) -> usize {
        // 1970-01-01 was a Thursday.
        (days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) as usize
    }

    fn yday(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) - days_from_civil(self.year, 1, 1) + 1
    }

    /// `strftime(fmt)` in the C locale, with glibc's `%-X` (no padding). Unknown conversions
    /// are copied as written.
    pub fn strftime(&self, fmt: &str) -> String {
        let mut out = String::new();
        let mut it = fmt.chars().peekable();
        while let Some(c) = it.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let unpadded = it.peek() == Some(&'-');
            if unpadded {
                it.next();
            }
            let Some(conv) = it.next() else {
                out.push('%');
                break;
            };
            let num = |out: &mut String, v: i64, width: usize| {
                let _ = if unpadded {
                    write!(out, "{v}")
                } else {
                    write!(out, "{v:0width$}")
                };
            };
            let month = MONTHS[(self.month as usize).clamp(1, 12) - 1];
            let day = DAYS[self.weekday()];
            match conv {
                'Y' => {
                    let _ = write!(out, "{}", self.year);
                }
                'y' => num(&mut out, i64::from(self.year.rem_euclid(100)), 2),
                'm' => num(&mut out, i64::from(self.month), 2),
                'd' => num(&mut out, i64::from(self.day), 2),
                'e' => {
                    let _ = write!(out, "{:2}", self.day);
                }
                'H' => num(&mut out, i64::from(self.hour), 2),
                'I' => num(&mut out, i64::from((self.hour + 11) % 12 + 1), 2),
                'M' => num(&mut out, i64::from(self.minute), 2),
                'S' => num(&mut out, i64::from(self.second), 2),
                'j' => num(&mut out, self.yday(), 3),
                'p' => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
                'B' => out.push_str(month),
                'b' | 'h' => out.push_str(&month[..3]),
                'A' => out.push_str(day),
                'a' => out.push_str(&day[..3]),
                'F' => {
                    let _ = write!(out, "{}-{:02}-{:02}", self.year, self.month, self.day);
                }
                '%' => out.push('%'),
                other => {
                    out.push('%');
                    if unpadded {
                        out.push('-');
                    }
                    out.push(other);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let d = DateTime::parse_date("2026-12-03").unwrap();
        assert_eq!(d.strftime("%Y-%m-%d"), "2026-12-03");
        assert_eq!(d.strftime("%d %b %Y"), "03 Dec 2026");
        assert_eq!(d.strftime("%B %d, %Y"), "December 03, 2026");
        assert_eq!(d.strftime("%A %-d %j %H:%M %%"), "Thursday 3 337 00:00 %");
        assert!(DateTime::parse_date("2026-02-30").is_none());
        let now = DateTime::now();
        assert!(now.year >= 2024 && (1..=12).contains(&now.month));
    }
}
