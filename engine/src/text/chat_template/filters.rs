//! Filters and tests whose minijinja versions differ from jinja2's in ways templates can see:
//! each follows jinja2 3.1's definition (`jinja2/filters.py`, `jinja2/tests.py`).

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

use super::python::py_str;

/// The output formatter: every `{{ value }}` is printed as Python's `str(value)`.
pub fn format_value(
    out: &mut minijinja::Output,
    _state: &mut State,
    value: &Value,
) -> Result<(), Error> {
    out.write_str(&py_str(value)?).map_err(|e| {
        Error::new(ErrorKind::WriteFailure, "could not write the output").with_source(e)
    })
}

/// jinja2's `string` filter: `str(value)`.
pub fn string_filter(value: &Value) -> Result<Value, Error> {
    Ok(match value.kind() {
        ValueKind::String => value.clone(),
        _ => Value::from(py_str(value)?),
    })
}

/// jinja2's `join(d='', attribute=None)`: `d.join(str(x) for x in value)`.
pub fn join_filter(value: &Value, sep: Option<String>, kwargs: Kwargs) -> Result<String, Error> {
    let attribute: Option<Value> = kwargs.get("attribute")?;
    kwargs.assert_all_used()?;
    let sep = sep.unwrap_or_default();
    // jinja2 iterates an Undefined as empty; None is not iterable.
    if value.is_none() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "join: none is not iterable",
        ));
    }
    let mut out = String::new();
    for (i, item) in value.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(&sep);
        }
        let item = match &attribute {
            Some(path) => lookup_path(&item, path)?,
            None => item,
        };
        out.push_str(&py_str(&item)?);
    }
    Ok(out)
}

/// jinja2's attribute getter: `a.b.0` looks up `a`, then `b`, then index 0.
fn lookup_path(item: &Value, path: &Value) -> Result<Value, Error> {
    if let Some(path) = path.as_str() {
        let mut v = item.clone();
        for part in path.split('.') {
            v = match part.parse::<i64>() {
                Ok(i) => v.get_item(&Value::from(i))?,
                Err(_) => v.get_attr(part)?,
            };
        }
        Ok(v)
    } else {
        item.get_item(path)
    }
}

/// jinja2's `int(default=0, base=10)`: `int(value)`, else `int(float(value))` (so `"42.5"` is
/// 42), else the default — never an error.
pub fn int_filter(
    value: &Value,
    default: Option<Value>,
    base: Option<u32>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let default = match default {
        Some(d) => d,
        None => kwargs
            .get::<Option<Value>>("default")?
            .unwrap_or(Value::from(0)),
    };
    let base = match base {
        Some(b) => b,
        None => kwargs.get::<Option<u32>>("base")?.unwrap_or(10),
    };
    kwargs.assert_all_used()?;
    let parsed = match value.kind() {
        ValueKind::Bool => Some(Value::from(i64::from(value.is_true()))),
        ValueKind::Number if value.is_integer() => Some(value.clone()),
        ValueKind::Number => f64::try_from(value.clone()).ok().and_then(truncate),
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            parse_int(s, base)
                .map(Value::from)
                .or_else(|| parse_float(s).and_then(truncate))
        }
        _ => None,
    };
    Ok(parsed.unwrap_or(default))
}

/// `int(x)` of a float: toward zero; infinities and NaN have no integer (the default then).
fn truncate(x: f64) -> Option<Value> {
    let t = x.trunc();
    (t.is_finite() && t.abs() < 1.7e38).then(|| Value::from(t as i128))
}

/// Python's `int(s, base)`: surrounding whitespace, a sign, `_` between digits, and for base 16,
/// 8 or 2 the matching `0x`/`0o`/`0b` prefix.
fn parse_int(s: &str, base: u32) -> Option<i128> {
    if !(2..=36).contains(&base) {
        return None;
    }
    let s = s.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let prefix = match base {
        16 => Some("0x"),
        8 => Some("0o"),
        2 => Some("0b"),
        _ => None,
    };
    let s = match prefix {
        Some(p) if s.len() > 2 && s[..2].eq_ignore_ascii_case(p) => s[2..].trim_start_matches('_'),
        _ => s,
    };
    let digits = without_digit_underscores(s)?;
    let n = i128::from_str_radix(&digits, base).ok()?;
    Some(if negative { -n } else { n })
}

/// Python's `float(s)`: surrounding whitespace, `_` between digits, `inf`/`nan` in any case.
fn parse_float(s: &str) -> Option<f64> {
    let s = s.trim();
    without_digit_underscores(s)?.parse::<f64>().ok()
}

/// `s` with each `_` that stands between two digits removed; `None` if any other `_` is there.
fn without_digit_underscores(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if c == '_' {
            let ok = i > 0
                && b[i - 1].is_ascii_alphanumeric()
                && b.get(i + 1).is_some_and(|n| n.is_ascii_alphanumeric());
            if !ok {
                return None;
            }
        } else {
            out.push(c);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// jinja2's `float(default=0.0)`: `float(value)`, else the default.
pub fn float_filter(value: &Value, default: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let default = match default {
        Some(d) => d,
        None => kwargs
            .get::<Option<Value>>("default")?
            .unwrap_or(Value::from(0.0)),
    };
    kwargs.assert_all_used()?;
    let parsed = match value.kind() {
        ValueKind::Bool => Some(if value.is_true() { 1.0 } else { 0.0 }),
        ValueKind::Number => f64::try_from(value.clone()).ok(),
        ValueKind::String => parse_float(value.as_str().unwrap_or_default()),
        _ => None,
    };
    Ok(parsed.map(Value::from).unwrap_or(default))
}

/// jinja2's `wordcount`: the number of `\w+` runs.
pub fn wordcount_filter(value: &Value) -> Result<usize, Error> {
    let s = py_str(value)?;
    let mut count = 0;
    let mut in_word = false;
    for c in s.chars() {
        let word = c.is_alphanumeric() || c == '_';
        if word && !in_word {
            count += 1;
        }
        in_word = word;
    }
    Ok(count)
}

/// jinja2's `attr(name)`: an attribute only, never a dict key (`{'a': 1}|attr('a')` is
/// undefined). Namespaces and other objects keep their attributes.
pub fn attr_filter(value: &Value, name: &str) -> Result<Value, Error> {
    if is_dict(value) {
        return Ok(Value::UNDEFINED);
    }
    value.get_attr(name)
}

/// A dict as Python sees one: a map from the context or a `{...}` literal, not a namespace,
/// loop or keyword-arguments object (minijinja makes those maps too).
pub fn is_dict(v: &Value) -> bool {
    v.kind() == ValueKind::Map
        && !v.is_kwargs()
        && v.as_object()
            .is_some_and(|o| o.enumerator_len().is_some() && o.type_name().contains("Map"))
}

/// jinja2's `sequence` test: has a length and items — strings, lists, dicts, and undefined
/// values (jinja2's Undefined has both).
pub fn is_sequence(v: &Value) -> bool {
    matches!(
        v.kind(),
        ValueKind::Undefined | ValueKind::String | ValueKind::Seq
    ) || is_dict(v)
}

/// jinja2's `iterable` test: `iter(value)` works — strings, lists, dicts, and (jinja2's
/// Undefined being iterable) undefined values; not none, numbers or booleans.
pub fn is_iterable(v: &Value) -> bool {
    match v.kind() {
        ValueKind::Undefined | ValueKind::String | ValueKind::Seq | ValueKind::Map => true,
        ValueKind::Iterable => true,
        ValueKind::None | ValueKind::Bool | ValueKind::Number => false,
        _ => v.try_iter().is_ok(),
    }
}

/// jinja2's `callable` test: functions and macros.
pub fn is_callable(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        let name = o.type_name();
        name.contains("Function") || name.contains("Macro")
    })
}

/// jinja2's `center(width=80)`: Python's `str.center`.
pub fn center_filter(value: &Value, width: Option<usize>) -> Result<String, Error> {
    let s = py_str(value)?;
    let width = width.unwrap_or(80).min(1 << 20);
    let len = s.chars().count();
    if width <= len {
        return Ok(s);
    }
    let margin = width - len;
    // CPython's rule for where the odd space goes.
    let left = margin / 2 + (margin & width & 1);
    Ok(format!(
        "{}{s}{}",
        " ".repeat(left),
        " ".repeat(margin - left)
    ))
}

/// jinja2's `truncate(length=255, killwords=False, end='...', leeway=5)`: text up to
/// `length + leeway` characters stays whole; longer text is cut to `length` including `end`, at
/// a space unless `killwords`. (`leeway` only by keyword: minijinja filters take at most five
/// parameters.)
pub fn truncate_filter(
    value: &Value,
    length: Option<usize>,
    killwords: Option<bool>,
    end: Option<String>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let length = first(length, kwargs.get("length")?).unwrap_or(255);
    let killwords = first(killwords, kwargs.get("killwords")?).unwrap_or(false);
    let end = first(end, kwargs.get("end")?).unwrap_or_else(|| "...".to_string());
    let leeway = kwargs.get::<Option<usize>>("leeway")?.unwrap_or(5);
    kwargs.assert_all_used()?;
    let s = py_str(value)?;
    let chars: Vec<char> = s.chars().collect();
    let end_len = end.chars().count();
    if length < end_len {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("truncate: expected length >= {end_len}, got {length}"),
        ));
    }
    if chars.len() <= length + leeway {
        return Ok(s);
    }
    let head: String = chars[..length - end_len].iter().collect();
    let head = if killwords {
        head
    } else {
        match head.rsplit_once(' ') {
            Some((before, _)) => before.to_string(),
            None => head,
        }
    };
    Ok(head + &end)
}

fn first<T>(positional: Option<T>, keyword: Option<T>) -> Option<T> {
    positional.or(keyword)
}
