//! `strftime_now(fmt)`: Python's `datetime.now().strftime(fmt)` on Linux, which is glibc's
//! `strftime` in the C locale on a naive (zone-less) time.
//!
//! Written out here rather than taken from chrono's formatter so that every conversion, flag
//! and unknown sequence behaves as glibc's does (chrono fails on some, prints others
//! differently); `scripts/chat_template_cases.py` records Python's answers for the tests.

use chrono::{Datelike, NaiveDateTime, Timelike};

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
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

/// Padding asked for by a flag after `%`.
#[derive(Clone, Copy, PartialEq)]
enum Pad {
    Default,
    None,
    Space,
    Zero,
}

/// Formats `t` as glibc's `strftime(fmt)` does in the C locale. `%z` and `%Z` are empty, as
/// Python gives them for a naive datetime. `%s` treats `t` as UTC.
pub fn strftime(t: &NaiveDateTime, fmt: &str) -> String {
    let mut out = String::new();
    let mut rest = fmt;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let spec = &rest[pos..];
        match conversion(t, spec) {
            Some((text, used)) => {
                out.push_str(&text);
                rest = &spec[used..];
            }
            None => {
                // glibc copies an incomplete or unknown sequence as it is: `%Q` → "%Q".
                let used = unknown_len(spec);
                out.push_str(&spec[..used]);
                rest = &spec[used..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Length of an unrecognised `%...` sequence: the `%`, its flags, width and modifier, and the
/// character after them if there is one.
fn unknown_len(spec: &str) -> usize {
    let mut chars = spec.char_indices().skip(1);
    for (i, c) in chars.by_ref() {
        if !(matches!(c, '-' | '_' | '0' | '^' | '#' | 'E' | 'O') || c.is_ascii_digit()) {
            return i + c.len_utf8();
        }
    }
    spec.len()
}

/// One `%[flags][width][E|O]X` at the start of `spec`: the text and the bytes consumed.
fn conversion(t: &NaiveDateTime, spec: &str) -> Option<(String, usize)> {
    let bytes = spec.as_bytes();
    let mut i = 1;
    let mut pad = Pad::Default;
    let mut upper = false;
    let mut swap = false;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => pad = Pad::None,
            b'_' => pad = Pad::Space,
            b'0' => pad = Pad::Zero,
            b'^' => upper = true,
            b'#' => swap = true,
            _ => break,
        }
        i += 1;
    }
    let width_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let width: Option<usize> = spec[width_start..i]
        .parse()
        .ok()
        .map(|w: usize| w.min(1024));
    if i < bytes.len() && matches!(bytes[i], b'E' | b'O') {
        i += 1;
    }
    let c = *bytes.get(i)? as char;
    i += 1;

    let num = |value: i64, digits: usize, fill: char| Some(number(value, digits, width, fill, pad));
    let hour12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    let weekday_sun0 = t.weekday().num_days_from_sunday();
    let yday = t.ordinal0() as i64;
    let am = t.hour() < 12;
    let text = match c {
        'a' => Some(case(&DAYS[weekday_sun0 as usize][..3], upper || swap)),
        'A' => Some(case(DAYS[weekday_sun0 as usize], upper || swap)),
        'b' | 'h' => Some(case(&MONTHS[t.month0() as usize][..3], upper || swap)),
        'B' => Some(case(MONTHS[t.month0() as usize], upper || swap)),
        'p' => Some(
            match (am, swap) {
                (true, false) => "AM",
                (false, false) => "PM",
                (true, true) => "am",
                (false, true) => "pm",
            }
            .to_string(),
        ),
        'P' => Some(if am { "am" } else { "pm" }.to_string()),
        'C' => num(t.year().div_euclid(100) as i64, 2, '0'),
        'd' => num(t.day() as i64, 2, '0'),
        'e' => num(t.day() as i64, 2, ' '),
        'H' => num(t.hour() as i64, 2, '0'),
        'k' => num(t.hour() as i64, 2, ' '),
        'I' => num(hour12 as i64, 2, '0'),
        'l' => num(hour12 as i64, 2, ' '),
        'j' => num(yday + 1, 3, '0'),
        'm' => num(t.month() as i64, 2, '0'),
        'M' => num(t.minute() as i64, 2, '0'),
        'S' => num(t.second() as i64, 2, '0'),
        'y' => num(t.year().rem_euclid(100) as i64, 2, '0'),
        'Y' => num(t.year() as i64, 1, '0'),
        'G' => num(t.iso_week().year() as i64, 1, '0'),
        'g' => num(t.iso_week().year().rem_euclid(100) as i64, 2, '0'),
        'V' => num(t.iso_week().week() as i64, 2, '0'),
        'u' => num(t.weekday().number_from_monday() as i64, 1, '0'),
        'w' => num(weekday_sun0 as i64, 1, '0'),
        'U' => num((yday + 7 - weekday_sun0 as i64) / 7, 2, '0'),
        'W' => num(
            (yday + 7 - t.weekday().num_days_from_monday() as i64) / 7,
            2,
            '0',
        ),
        's' => num(t.and_utc().timestamp(), 1, '0'),
        'n' => Some("\n".into()),
        't' => Some("\t".into()),
        '%' => Some("%".into()),
        'z' | 'Z' => Some(String::new()),
        'c' => Some(strftime(t, "%a %b %e %H:%M:%S %Y")),
        'D' | 'x' => Some(strftime(t, "%m/%d/%y")),
        'F' => Some(strftime(t, "%Y-%m-%d")),
        'r' => Some(strftime(t, "%I:%M:%S %p")),
        'R' => Some(strftime(t, "%H:%M")),
        'T' | 'X' => Some(strftime(t, "%H:%M:%S")),
        _ => None,
    }?;
    let text = if upper { text.to_uppercase() } else { text };
    // A width wider than a text conversion pads it on the left (with zeros under `0`).
    let text = match width {
        Some(w) if !c.is_ascii_digit() && text.chars().count() < w && !is_numeric(c) => {
            let fill = if pad == Pad::Zero { '0' } else { ' ' };
            let mut padded: String = std::iter::repeat_n(fill, w - text.chars().count()).collect();
            padded.push_str(&text);
            padded
        }
        _ => text,
    };
    Some((text, i))
}

fn is_numeric(c: char) -> bool {
    "CdeHkIljmMSyYGgVuwUWs".contains(c)
}

fn case(s: &str, upper: bool) -> String {
    if upper {
        s.to_uppercase()
    } else {
        s.to_string()
    }
}

/// A number padded to its conversion's `digits` with its `fill`, or as a flag or an explicit
/// `width` asks. glibc's `-` drops only the conversion's own padding: a width still pads, with
/// spaces.
fn number(value: i64, digits: usize, width: Option<usize>, fill: char, pad: Pad) -> String {
    let text = value.unsigned_abs().to_string();
    let sign = if value < 0 { "-" } else { "" };
    let fill = match pad {
        Pad::Default => fill,
        Pad::Space | Pad::None => ' ',
        Pad::Zero => '0',
    };
    let width = match (pad, width) {
        (Pad::None, None) => 0,
        (_, w) => w.unwrap_or(digits),
    };
    let digits = text;
    let len = sign.len() + digits.len();
    if len >= width {
        return format!("{sign}{digits}");
    }
    let padding: String = std::iter::repeat_n(fill, width - len).collect();
    if fill == '0' {
        format!("{sign}{padding}{digits}")
    } else {
        format!("{padding}{sign}{digits}")
    }
}
