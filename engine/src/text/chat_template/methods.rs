//! Python methods on template values (`content.strip()`, `d.items()`, ...): minijinja-contrib's
//! `pycompat` callback, with the few that it lacks or that differ from Python done here first.

use minijinja::value::{from_args, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

/// The environment's unknown-method callback.
pub fn call_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        if let Some(result) = string_method(s, method, args)? {
            return Ok(result);
        }
    }
    if value.kind() == ValueKind::Seq && method == "index" {
        let (needle,): (Value,) = from_args(args)?;
        return match value.try_iter()?.position(|item| item == needle) {
            Some(i) => Ok(Value::from(i)),
            None => Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("list.index: {needle:?} is not in the list"),
            )),
        };
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Option<Value>, Error> {
    Ok(Some(match method {
        // pycompat's title is jinja2's `title` filter, which capitalises after `-` and spaces
        // only; Python's str.title capitalises after anything that is not a cased letter.
        "title" => {
            let () = from_args(args)?;
            Value::from(py_title(s))
        }
        // Python breaks lines at \r, \v, \f, \x1c-\x1e, \x85, U+2028 and U+2029 as well.
        "splitlines" => {
            let (keepends,): (Option<bool>,) = from_args(args)?;
            Value::from(py_splitlines(s, keepends.unwrap_or(false)))
        }
        "rsplit" => {
            let (sep, maxsplit): (Option<Value>, Option<i64>) = from_args(args)?;
            let sep = sep.filter(|v| !v.is_none());
            let sep = match &sep {
                Some(v) => Some(v.as_str().ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "rsplit: separator must be a string",
                    )
                })?),
                None => None,
            };
            Value::from(py_rsplit(s, sep, maxsplit.unwrap_or(-1))?)
        }
        "removeprefix" => {
            let (prefix,): (&str,) = from_args(args)?;
            Value::from(s.strip_prefix(prefix).unwrap_or(s))
        }
        "removesuffix" => {
            let (suffix,): (&str,) = from_args(args)?;
            Value::from(s.strip_suffix(suffix).unwrap_or(s))
        }
        _ => return Ok(None),
    }))
}

fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut previous_cased = false;
    for c in s.chars() {
        if previous_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        previous_cased = c.is_lowercase() || c.is_uppercase();
    }
    out
}

fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\u{b}'
            | '\u{c}'
            | '\u{1c}'
            | '\u{1d}'
            | '\u{1e}'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

fn py_splitlines(s: &str, keepends: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !is_line_break(c) {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c == '\r' {
            if let Some(&(j, '\n')) = chars.peek() {
                chars.next();
                end = j + 1;
            }
        }
        lines.push(s[start..if keepends { end } else { i }].to_string());
        start = end;
    }
    if start < s.len() {
        lines.push(s[start..].to_string());
    }
    lines
}

/// Python's `str.rsplit(sep=None, maxsplit=-1)`.
fn py_rsplit(s: &str, sep: Option<&str>, maxsplit: i64) -> Result<Vec<String>, Error> {
    let limit = if maxsplit < 0 {
        usize::MAX
    } else {
        maxsplit as usize
    };
    let mut parts: Vec<String> = match sep {
        Some("") => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "rsplit: empty separator",
            ))
        }
        Some(sep) => {
            let mut parts = Vec::new();
            let mut rest = s;
            while parts.len() < limit {
                match rest.rfind(sep) {
                    Some(at) => {
                        parts.push(rest[at + sep.len()..].to_string());
                        rest = &rest[..at];
                    }
                    None => break,
                }
            }
            parts.push(rest.to_string());
            parts
        }
        None => {
            // Runs of whitespace separate; leading and trailing whitespace gives no empty parts.
            let mut parts = Vec::new();
            let mut rest = s.trim_end();
            while !rest.is_empty() {
                if parts.len() == limit {
                    parts.push(rest.to_string());
                    break;
                }
                match rest.rfind(char::is_whitespace) {
                    Some(at) => {
                        let ws = rest[at..].chars().next().map_or(1, char::len_utf8);
                        parts.push(rest[at + ws..].to_string());
                        rest = rest[..at].trim_end();
                    }
                    None => {
                        parts.push(rest.to_string());
                        rest = "";
                    }
                }
            }
            parts
        }
    };
    parts.reverse();
    Ok(parts)
}
