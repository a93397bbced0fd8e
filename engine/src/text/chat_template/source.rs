//! Template source as jinja2 would read it, rewritten into the form minijinja reads the same way.
//!
//! - jinja2's lexer turns `\r\n` and `\r` into `\n` (its default `newline_sequence`), in text and
//!   string literals alike; minijinja keeps them.
//! - jinja2 decodes string literals with Python's `unicode_escape`: a backslash before a newline
//!   continues the line (Mistral Small 3.1's template relies on it), and `\a`, `\v`,
//!   `\UXXXXXXXX` are escapes while `\/` is not. minijinja's unescaper keeps the first, lacks the
//!   next three and turns `\/` into `/`, so those are rewritten inside literals. (`\N{name}` is
//!   left alone: it would need Unicode's name table.)
//! - HF's `AssistantTracker` extension adds `{% generation %}...{% endgeneration %}`, which
//!   renders its body outside assistant-mask tracking. `{% with %}` behaves the same (a scope of
//!   its own, the same whitespace control), so the tags are renamed.

/// The rewritten source.
pub fn prepare_source(source: &str) -> String {
    let source = source.replace("\r\n", "\n").replace('\r', "\n");
    let src = source.as_str();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while let Some(found) = src[i..].find('{') {
        let start = i + found;
        out.push_str(&src[i..start]);
        let rest = &src[start..];
        i = if rest.starts_with("{#") {
            // A comment: copied through (minijinja drops it as jinja2 does).
            let end = rest.find("#}").map_or(src.len(), |e| start + e + 2);
            out.push_str(&src[start..end]);
            end
        } else if rest.starts_with("{%") {
            if let Some((renamed, used)) = rename_generation_tag(rest) {
                out.push_str(&renamed);
                start + used
            } else if is_tag(rest, "raw") {
                // Text up to `{% endraw %}` is not Jinja: copied as it is.
                let end = find_endraw(src, start + 2).unwrap_or(src.len());
                out.push_str(&src[start..end]);
                end
            } else {
                copy_tag(src, start, "%}", &mut out)
            }
        } else if rest.starts_with("{{") {
            copy_tag(src, start, "}}", &mut out)
        } else {
            out.push('{');
            start + 1
        };
    }
    out.push_str(&src[i..]);
    out
}

/// Whether `tag` (starting at `{%`) opens with the keyword `word`.
fn is_tag(tag: &str, word: &str) -> bool {
    let inner = tag[2..].trim_start_matches(['-', '+']).trim_start();
    inner.starts_with(word)
        && !inner[word.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
}

/// The end of the `{% endraw %}` tag after `from`, if any.
fn find_endraw(src: &str, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(p) = src[at..].find("{%") {
        let tag = at + p;
        if is_tag(&src[tag..], "endraw") {
            return src[tag..].find("%}").map(|e| tag + e + 2);
        }
        at = tag + 2;
    }
    None
}

/// Copies the tag opening at `start` up to and including `close` (`%}` or `}}`, found outside
/// brackets and string literals, as jinja2's lexer balances them), rewriting string literals.
/// Returns where the copy stopped.
fn copy_tag(src: &str, start: usize, close: &str, out: &mut String) -> usize {
    out.push_str(&src[start..start + 2]);
    let bytes = src.as_bytes();
    let mut depth = 0usize;
    let mut i = start + 2;
    while i < src.len() {
        if depth == 0 && src[i..].starts_with(close) {
            out.push_str(close);
            return i + close.len();
        }
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                let (end, closed) = literal_end(bytes, i, q);
                let body_end = if closed { end - 1 } else { end };
                out.push(q as char);
                out.push_str(&rewrite_escapes(&src[i + 1..body_end]));
                if closed {
                    out.push(q as char);
                }
                i = end;
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        // Copy one whole character.
        let len = src[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&src[i..i + len]);
        i += len;
    }
    src.len()
}

/// The index just past the literal opening at `open` with quote `q`, and whether it was closed
/// (an unclosed one runs to the end of input, where minijinja reports it).
fn literal_end(bytes: &[u8], open: usize, q: u8) -> (usize, bool) {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == q => return (i + 1, true),
            _ => i += 1,
        }
    }
    (bytes.len(), false)
}

/// A literal's body with Python's escapes that minijinja reads differently made explicit.
fn rewrite_escapes(body: &str) -> String {
    if !body.contains('\\') {
        return body.to_string();
    }
    let mut out = String::with_capacity(body.len());
    let mut chars = body.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(&(_, next)) = chars.peek() else {
            out.push('\\');
            break;
        };
        match next {
            '\n' => {
                chars.next();
            }
            'a' => {
                chars.next();
                out.push_str("\\x07");
            }
            'v' => {
                chars.next();
                out.push_str("\\x0b");
            }
            '/' => {
                chars.next();
                out.push_str("\\\\/");
            }
            'U' => {
                let hex = body.get(at + 2..at + 10).unwrap_or("");
                match u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) if hex.len() == 8 => {
                        for _ in 0..9 {
                            chars.next();
                        }
                        if matches!(ch, '\\' | '\'' | '"') {
                            out.push('\\');
                        }
                        out.push(ch);
                    }
                    _ => out.push('\\'),
                }
            }
            other => {
                // Every other escape means the same to both: keep the pair as written.
                chars.next();
                out.push('\\');
                out.push(other);
            }
        }
    }
    out
}

/// `{%- generation +%}` → `{%- with +%}` and `{% endgeneration %}` → `{% endwith %}`, keeping
/// whitespace control; `None` for any other tag.
fn rename_generation_tag(tag: &str) -> Option<(String, usize)> {
    let end = tag.find("%}")? + 2;
    let inner = &tag[2..end - 2];
    let (open, body) = match inner.strip_prefix(['-', '+']) {
        Some(b) => (&inner[..1], b),
        None => ("", inner),
    };
    let (body, close) = match body.strip_suffix(['-', '+']) {
        Some(b) => (b, &body[b.len()..]),
        None => (body, ""),
    };
    let word = match body.trim() {
        "generation" => "with",
        "endgeneration" => "endwith",
        _ => return None,
    };
    Some((format!("{{%{open} {word} {close}%}}"), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_with_blocks() {
        assert_eq!(
            prepare_source("a{%- generation %}b{% endgeneration -%}c{% if x %}"),
            "a{%- with %}b{% endwith -%}c{% if x %}"
        );
        assert_eq!(prepare_source("{% generations %}"), "{% generations %}");
    }

    #[test]
    fn newlines_are_normalised() {
        assert_eq!(prepare_source("x\r\ny\rz"), "x\ny\nz");
    }

    #[test]
    fn python_escapes_in_literals_are_rewritten() {
        assert_eq!(
            prepare_source("{{ 'a\\\nb' }} {% set x = \"\\U0001F600\\a\\/\" %}"),
            "{{ 'ab' }} {% set x = \"😀\\x07\\\\/\" %}"
        );
        // Escaped quotes keep the literal open; `\U` naming a quote keeps it escaped.
        assert_eq!(
            prepare_source("{{ 'it\\'s \\U00000027' }}"),
            "{{ 'it\\'s \\'' }}"
        );
    }

    #[test]
    fn text_comments_and_raw_blocks_are_untouched() {
        let src = "a\\\nb {# '\\\n' #}{% raw %}{{ 'x\\\ny' }}{% endraw %}{{ {'k': {'j': '\\a'}} }}";
        assert_eq!(
            prepare_source(src),
            "a\\\nb {# '\\\n' #}{% raw %}{{ 'x\\\ny' }}{% endraw %}{{ {'k': {'j': '\\x07'}} }}"
        );
    }
}
