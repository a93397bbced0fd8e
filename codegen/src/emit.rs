//! Small helpers shared by every emitter: literals, doc attributes, ordinary comments and
//! the final parse → prettyplease → text step.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{quote, ToTokens};

/// The macro name that stands for an ordinary `//` comment until [`render`] rewrites it.
/// prettyplease prints a syntax tree and a syntax tree has no comments, so comments travel
/// through it disguised as statement/item macros.
const COMMENT_MACRO: &str = "__codegen_comment";

/// An unsuffixed integer literal (`768`, not the `768usize` that quoting a `usize` gives).
pub(crate) fn lit(n: usize) -> Literal {
    Literal::usize_unsuffixed(n)
}

/// An identifier built from a format string result.
pub(crate) fn ident(name: &str) -> Ident {
    Ident::new(name, Span::call_site())
}

/// Text width of emitted doc comments and comments, so that nested items stay within
/// about 100 columns like hand-written code.
const WRAP: usize = 80;

/// Greedy word wrap of each line of `text` to [`WRAP`] columns; blank lines are kept and
/// `code spans` are never split.
fn wrap(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == ' ' && !in_code {
                words.push(std::mem::take(&mut word));
                continue;
            }
            in_code ^= c == '`';
            word.push(c);
        }
        words.push(word);
        let mut current = String::new();
        for word in words {
            if !current.is_empty() && current.len() + 1 + word.len() > WRAP {
                out.push(std::mem::take(&mut current));
            } else if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(&word);
        }
        out.push(current);
    }
    out
}

/// `#[doc = " ..."]` attributes, one per line, which prettyplease prints as `///` comments.
pub(crate) fn doc(text: &str) -> TokenStream {
    let lines = wrap(text).into_iter().map(|line| {
        let line = if line.is_empty() {
            String::new()
        } else {
            format!(" {line}")
        };
        quote!(#[doc = #line])
    });
    quote!(#(#lines)*)
}

/// An ordinary `//` comment, usable in statement or item position, one marker per line.
pub(crate) fn comment(text: &str) -> TokenStream {
    let name = ident(COMMENT_MACRO);
    let lines = wrap(text).into_iter().map(|line| quote!(#name!(#line);));
    quote!(#(#lines)*)
}

/// `base` or `base.add(offset)`: a pointer `offset` floats past a named base pointer.
#[derive(Clone)]
pub(crate) struct At {
    base: Ident,
    offset: usize,
}

impl At {
    /// `offset` floats past `base`.
    pub(crate) fn new(base: &Ident, offset: usize) -> Self {
        Self {
            base: base.clone(),
            offset,
        }
    }

    /// The same pointer moved `more` floats further.
    pub(crate) fn plus(&self, more: usize) -> Self {
        Self::new(&self.base, self.offset + more)
    }
}

impl ToTokens for At {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        let base = &self.base;
        if self.offset == 0 {
            tokens.extend(quote!(#base));
        } else {
            let offset = lit(self.offset);
            tokens.extend(quote!(#base.add(#offset)));
        }
    }
}

/// Parses the tokens as a file, pretty-prints it, turns comment markers back into `//`
/// comments and puts `header` (already `//`-prefixed lines) on top.
pub(crate) fn render(header: &str, tokens: TokenStream) -> String {
    let file: syn::File = match syn::parse2(tokens) {
        Ok(file) => file,
        Err(e) => panic!("codegen emitted tokens that are not a Rust file: {e}"),
    };
    let pretty = prettyplease::unparse(&file);
    let mut out = String::with_capacity(header.len() + pretty.len());
    out.push_str(header);
    let open = format!("{COMMENT_MACRO}!(");
    let mut lines = pretty.lines();
    let mut previous = String::new();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        // prettyplease packs items together; a blank line before each documented item or
        // comment that follows a finished statement or item reads like hand-written code.
        let starts_section = trimmed.starts_with("///") || trimmed.starts_with(&open);
        let ends_code =
            !previous.starts_with("//") && (previous.ends_with(';') || previous.ends_with('}'));
        if starts_section && ends_code {
            out.push('\n');
        }
        let Some(rest) = trimmed.strip_prefix(&open) else {
            out.push_str(line);
            out.push('\n');
            previous = trimmed.to_string();
            continue;
        };
        // prettyplease prints a marker on one line, or as `name!(` / literal / `);` when long.
        let literal = match rest.strip_suffix(");") {
            Some(literal) => literal.to_string(),
            None => {
                let literal = lines.next().unwrap_or_default().trim().to_string();
                assert_eq!(
                    lines.next().map(str::trim),
                    Some(");"),
                    "unexpected comment layout"
                );
                literal
            }
        };
        let text = syn::parse_str::<syn::LitStr>(&literal)
            .expect("comment markers hold one string literal")
            .value();
        out.push_str(indent);
        out.push_str("//");
        if !text.is_empty() {
            out.push(' ');
            out.push_str(&text);
        }
        out.push('\n');
        previous = String::from("//");
    }
    assert!(
        !out.contains(COMMENT_MACRO),
        "a comment marker survived rendering"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_docs_survive_pretty_printing() {
        let c = comment("why this is so\nsecond line");
        let d = doc("A thing.\n\nMore.");
        let text = render("// head\n", quote!(#d pub fn f() { #c let _x = 1; }));
        assert!(text.starts_with("// head\n"), "{text}");
        assert!(text.contains("/// A thing.\n///\n/// More.\n"), "{text}");
        assert!(
            text.contains("    // why this is so\n    // second line\n"),
            "{text}"
        );
    }

    #[test]
    fn wrapping_keeps_code_spans_whole() {
        let long = format!("{} `a b c` end", "word ".repeat(15));
        let lines = wrap(&long);
        assert!(
            lines.iter().all(|l| l.matches('`').count() % 2 == 0),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| l.len() <= WRAP), "{lines:?}");
    }

    #[test]
    fn pointer_offsets_are_literal() {
        let p = ident("xp");
        assert_eq!(At::new(&p, 0).to_token_stream().to_string(), "xp");
        assert_eq!(
            At::new(&p, 16).plus(2).to_token_stream().to_string(),
            "xp . add (18)"
        );
    }
}
