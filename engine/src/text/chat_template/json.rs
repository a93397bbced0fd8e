//! The `tojson` filter as Hugging Face defines it for chat templates:
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//!
//! minijinja's own `tojson` is compact and HTML-escapes `<`, `>`, `&` and `'`, so templates that
//! show tool schemas to the model would differ from Python's text. This writes what Python's
//! `json` module writes: `", "` / `": "` separators (`","` once `indent` is set), Python's float
//! repr, `NaN`/`Infinity`, `\uXXXX` only for control characters (and for all non-ASCII with
//! `ensure_ascii`), keys in insertion order unless `sort_keys`.

use std::fmt::Write;

use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Error, ErrorKind};

use super::filters::is_dict;
use super::python::{float_repr, too_deep, MAX_DEPTH};

/// A bound on the text, which `indent` can inflate far beyond the value's own size.
const MAX_BYTES: usize = 64 << 20;

/// How `json.dumps` was asked to write.
struct Options {
    ensure_ascii: bool,
    /// `None`: one line. `Some(unit)`: a newline and `unit` per level before each item.
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// The filter: `value|tojson`, `tojson(indent=4)`, `tojson(separators=(',', ':'))`, ...
/// Positional arguments follow HF's signature: `ensure_ascii, indent, separators, sort_keys`.
pub fn tojson_filter(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            format!("tojson takes at most {} arguments", NAMES.len()),
        ));
    }
    let mut params: [Option<Value>; 4] = Default::default();
    for (slot, arg) in params.iter_mut().zip(args.iter()) {
        *slot = Some(arg.clone());
    }
    for (i, name) in NAMES.iter().enumerate() {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if params[i].is_some() {
                return Err(Error::new(
                    ErrorKind::TooManyArguments,
                    format!("tojson got multiple values for argument '{name}'"),
                ));
            }
            params[i] = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(indent_unit(&v)?),
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => separators_from(&v)?,
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = Options {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    write_value(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

/// Python: an int (or bool) `n` means `n` spaces (none when negative); a string is used as is.
fn indent_unit(v: &Value) -> Result<String, Error> {
    match v.kind() {
        ValueKind::String => Ok(v.as_str().unwrap_or_default().to_string()),
        ValueKind::Bool => Ok(if v.is_true() { " " } else { "" }.to_string()),
        ValueKind::Number if v.is_integer() => {
            let n = i64::try_from(v.clone()).unwrap_or(0).clamp(0, 1 << 16);
            Ok(" ".repeat(n as usize))
        }
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson: indent must be an integer or a string, not {}",
                v.kind()
            ),
        )),
    }
}

fn separators_from(v: &Value) -> Result<(String, String), Error> {
    let parts: Vec<Value> = match v.kind() {
        ValueKind::Seq => v.try_iter()?.collect(),
        _ => Vec::new(),
    };
    match parts.as_slice() {
        [a, b] if a.as_str().is_some() && b.as_str().is_some() => Ok((
            a.as_str().unwrap_or_default().to_string(),
            b.as_str().unwrap_or_default().to_string(),
        )),
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: separators must be a pair of strings (item separator, key separator)",
        )),
    }
}

fn not_serializable(what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: object of type {what} is not JSON serializable"),
    )
}

fn write_value(out: &mut String, v: &Value, opts: &Options, level: usize) -> Result<(), Error> {
    if level > MAX_DEPTH {
        return Err(too_deep("tojson"));
    }
    match v.kind() {
        ValueKind::Undefined => Err(not_serializable("Undefined")),
        ValueKind::None => {
            out.push_str("null");
            Ok(())
        }
        ValueKind::Bool => {
            out.push_str(if v.is_true() { "true" } else { "false" });
            Ok(())
        }
        ValueKind::Number => {
            write_number(out, v);
            Ok(())
        }
        ValueKind::String => {
            write_string(out, v.as_str().unwrap_or_default(), opts.ensure_ascii);
            Ok(())
        }
        ValueKind::Seq => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), opts, level, |out, i, level| {
                write_value(out, &items[i], opts, level)
            })
        }
        ValueKind::Map if is_dict(v) => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                entries.push((key, item));
            }
            if opts.sort_keys {
                sort_entries(&mut entries)?;
            }
            write_container(
                out,
                '{',
                '}',
                entries.len(),
                opts,
                level,
                |out, i, level| {
                    let (key, item) = &entries[i];
                    write_string(out, &key_string(key)?, opts.ensure_ascii);
                    out.push_str(&opts.key_sep);
                    write_value(out, item, opts, level)
                },
            )
        }
        kind => Err(not_serializable(kind)),
    }
}

/// `[` + items + `]`, with Python's newline-and-indent layout when `indent` is set.
fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    opts: &Options,
    level: usize,
    mut item: impl FnMut(&mut String, usize, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let inner = level + 1;
    for i in 0..len {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        if let Some(unit) = &opts.indent {
            if out.len() + unit.len() * inner > MAX_BYTES {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: the text would exceed {MAX_BYTES} bytes"),
                ));
            }
            out.push('\n');
            out.push_str(&unit.repeat(inner));
        }
        item(out, i, inner)?;
    }
    if let Some(unit) = &opts.indent {
        out.push('\n');
        out.push_str(&unit.repeat(level));
    }
    out.push(close);
    Ok(())
}

fn write_number(out: &mut String, v: &Value) {
    if v.is_integer() {
        let _ = write!(out, "{v}");
        return;
    }
    let x = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x < 0.0 { "-Infinity" } else { "Infinity" });
    } else {
        out.push_str(&float_repr(x));
    }
}

/// Python converts non-string keys: `1` → `"1"`, `True` → `"true"`, `None` → `"null"`.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key);
            Ok(s)
        }
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

/// `sorted(d.items())`: strings by code point, numbers by value; mixing them is Python's
/// TypeError.
fn sort_entries(entries: &mut [(Value, Value)]) -> Result<(), Error> {
    let all_strings = entries.iter().all(|(k, _)| k.kind() == ValueKind::String);
    let all_numbers = entries
        .iter()
        .all(|(k, _)| matches!(k.kind(), ValueKind::Number | ValueKind::Bool));
    if all_strings {
        entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
    } else if all_numbers {
        entries.sort_by(|a, b| {
            let x = f64::try_from(a.0.clone()).unwrap_or(0.0);
            let y = f64::try_from(b.0.clone()).unwrap_or(0.0);
            x.total_cmp(&y)
        });
    } else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: sort_keys needs keys of one kind (all strings or all numbers)",
        ));
    }
    Ok(())
}

/// A JSON string literal as Python writes it.
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
