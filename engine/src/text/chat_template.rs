//! Chat templates: a model's `tokenizer.chat_template` (Jinja) rendered as Hugging Face
//! transformers' `apply_chat_template` renders it with Python's jinja2.
//!
//! The engine is minijinja 3.1 (features `loop_controls`, `preserve_order`, `serde`, `fuel`) with
//! minijinja-contrib's `pycompat` methods, set up the way HF sets up jinja2: `trim_blocks`,
//! `lstrip_blocks`, loop controls, `raise_exception(msg)`, `strftime_now(fmt)`, and a `tojson`
//! filter that is Python's `json.dumps(ensure_ascii=False)`. Where minijinja and jinja2 differ in
//! ways templates see, this module follows jinja2:
//! - values print as Python's `str()`: `None`, `True`, `1e+20`, `['a', None]`, `{'k': 1}`;
//! - `string`, `join`, `int`, `float`, `attr`, `wordcount`, `center`, `truncate`, and the tests
//!   `sequence`, `iterable`, `callable`, follow jinja2's definitions;
//! - `str.title`, `splitlines`, `rsplit`, `removeprefix`, `removesuffix` and `list.index` are
//!   Python's;
//! - the source is read as jinja2's lexer reads it: `\r\n` becomes `\n`; string literals take
//!   Python's escapes (a backslash-newline continues the line, `\U0001F600`, `\a`, `\v`);
//! - HF's `{% generation %}` blocks render their body;
//! - a render has an instruction budget, so a runaway template is an error, not a hang.
//!
//! Known differences that remain (each pinned by a test in `tests/chat_template.rs`): none is
//! iterated as an empty sequence where jinja2 raises TypeError; no unary `+`; no Python `%`
//! string formatting; `\N{name}` escapes stay as written; values of different types compare
//! instead of raising; `~` writes floats of 1e16 and up in full; jinja2 filters that minijinja
//! lacks and nothing here adds (`filesizeformat`, `forceescape`, `pprint`, `random`,
//! `striptags`, `urlize`, `wordwrap`, `xmlattr`) are "unknown filter" errors.

mod filters;
mod json;
mod methods;
mod python;
mod source;
mod strftime;

use chrono::NaiveDateTime;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

pub use strftime::strftime;

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    /// The source is not valid Jinja (or uses a construct minijinja lacks).
    #[error("the chat template does not compile: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`: it refuses this conversation (for
    /// example a system message for a model without a system role). Displays the message alone.
    #[error("{0}")]
    Raised(String),
    /// Rendering failed for another reason: an undefined value used where jinja2 fails too, a
    /// type error, an unknown method, or the instruction budget running out.
    #[error("rendering the chat template failed: {0}")]
    Render(String),
    /// The context given to [`ChatTemplate::render`] is not a JSON object.
    #[error("the template context must be a JSON object with messages, add_generation_prompt, bos_token, ...; got {0}")]
    Context(&'static str),
    /// [`ChatTemplate::builtin`] was asked for a name it does not know.
    #[error("there is no built-in chat template named {name:?}; the built-in ones are {known}")]
    UnknownBuiltin {
        /// The name asked for.
        name: String,
        /// The names there are, comma-separated.
        known: String,
    },
}

/// Templates for models whose files carry none, as Jinja source, by name.
///
/// - `chatml`: `<|im_start|>{role}\n{content}<|im_end|>\n` per message (OpenAI's ChatML, as
///   Qwen and many fine-tunes use it), prompt `<|im_start|>assistant\n`.
/// - `llama2`: Meta's Llama 2 chat format (`chat_completion` in meta-llama/llama
///   `generation.py`): `{bos}[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} {eos}`.
/// - `llama3`: Meta's Llama 3 format: `{bos}` then
///   `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>` per message, prompt
///   `<|start_header_id|>assistant<|end_header_id|>\n\n`.
/// - `zephyr`: HuggingFaceH4/zephyr-7b-beta's `<|{role}|>\n{content}{eos}\n`, prompt
///   `<|assistant|>\n`.
pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    ("chatml", include_str!("templates/chatml.jinja")),
    ("llama2", include_str!("templates/llama2.jinja")),
    ("llama3", include_str!("templates/llama3.jinja")),
    ("zephyr", include_str!("templates/zephyr.jinja")),
];

/// The source of the built-in template `name`, if there is one.
pub fn builtin_source(name: &str) -> Option<&'static str> {
    BUILTIN_TEMPLATES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
}

/// The source of the built-in template `name`, or the error that lists the built-in names.
pub fn builtin_source_or_err(name: &str) -> Result<&'static str, TemplateError> {
    builtin_source(name).ok_or_else(|| TemplateError::UnknownBuiltin {
        name: name.to_string(),
        known: BUILTIN_TEMPLATES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// One chat turn for [`ChatTemplate::render_conversation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` (or whatever roles the template knows).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The template's name inside its environment; it has no extension, so nothing is auto-escaped.
const NAME: &str = "chat_template";

/// Instructions a render may execute. Real templates need about 70 per message (the seven
/// shared ones: at most 440 for six messages); a template that loops without end, or builds a
/// list by quadratic copying, stops here with an error within seconds instead of hanging.
const FUEL: u64 = 5_000_000;

/// Stack of the thread a render runs on. A template can nest a value once per loop step (about
/// nine instructions, so up to ~550k levels within [`FUEL`]), and dropping or printing such a
/// value recurses once per level; the main thread's 8 MiB overflows near 90k. Only the pages
/// used are ever committed.
const RENDER_STACK_BYTES: usize = 512 << 20;

/// A chat template compiled once, rendered any number of times.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// What `raise_exception` fails with, found again in the error's causes after rendering.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Compiles `source` (a `tokenizer.chat_template` or a `.jinja` file's text).
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| TemplateError::Syntax(one_line(&e)))?;
        env.set_syntax(syntax);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL));
        env.set_formatter(filters::format_value);
        env.set_unknown_method_callback(methods::call_method);
        env.add_filter("tojson", json::tojson_filter);
        env.add_filter("string", filters::string_filter);
        env.add_filter("join", filters::join_filter);
        env.add_filter("int", filters::int_filter);
        env.add_filter("float", filters::float_filter);
        env.add_filter("wordcount", filters::wordcount_filter);
        env.add_filter("attr", filters::attr_filter);
        env.add_filter("center", filters::center_filter);
        env.add_filter("truncate", filters::truncate_filter);
        env.add_test("sequence", filters::is_sequence);
        env.add_test("iterable", filters::is_iterable);
        env.add_test("callable", filters::is_callable);
        env.add_function(
            "raise_exception",
            |message: Value| -> Result<Value, Error> {
                let message = python::py_str(&message)?;
                Err(Error::new(ErrorKind::InvalidOperation, message.clone())
                    .with_source(Raised(message)))
            },
        );
        env.add_template_owned(NAME, source::prepare_source(source))
            .map_err(|e| TemplateError::Syntax(one_line(&e)))?;
        Ok(ChatTemplate { env })
    }

    /// The built-in template `name` (see [`BUILTIN_TEMPLATES`]).
    pub fn builtin(name: &str) -> Result<Self, TemplateError> {
        Self::new(builtin_source_or_err(name)?)
    }

    /// Renders with `context`'s keys as the template's variables (`messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`, `tools`, ... exactly as given);
    /// `strftime_now` reads the local clock.
    pub fn render(&self, context: &serde_json::Value) -> Result<String, TemplateError> {
        self.render_at(context, None)
    }

    /// Like [`render`](Self::render), with `strftime_now` reporting `now` instead of the local
    /// clock when it is given.
    pub fn render_at(
        &self,
        context: &serde_json::Value,
        now: Option<NaiveDateTime>,
    ) -> Result<String, TemplateError> {
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("chat-template".into())
                .stack_size(RENDER_STACK_BYTES)
                .spawn_scoped(scope, || self.render_here(context, now))
                .map_err(|e| {
                    TemplateError::Render(format!("could not start the rendering thread: {e}"))
                })?;
            worker.join().unwrap_or_else(|_| {
                Err(TemplateError::Render(
                    "the template renderer panicked".into(),
                ))
            })
        })
    }

    fn render_here(
        &self,
        context: &serde_json::Value,
        now: Option<NaiveDateTime>,
    ) -> Result<String, TemplateError> {
        let serde_json::Value::Object(map) = context else {
            return Err(TemplateError::Context(json_kind(context)));
        };
        let mut vars: std::collections::BTreeMap<String, Value> = map
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(Serde(v))))
            .collect();
        // A per-render variable rather than a global, so each render can have its own clock;
        // HF passes it as a global, which a context key of that name shadows just the same.
        vars.entry("strftime_now".to_string()).or_insert_with(|| {
            Value::from_function(move |fmt: String| {
                let now = now.unwrap_or_else(|| chrono::Local::now().naive_local());
                strftime(&now, &fmt)
            })
        });
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Syntax(one_line(&e)))?;
        template
            .render(Value::from(vars))
            .map_err(|e| render_error(&e))
    }

    /// Renders a plain conversation the way `apply_chat_template(messages,
    /// add_generation_prompt=...)` does: with `tools` and `documents` set to none and the
    /// tokenizer's `bos_token` / `eos_token` texts.
    pub fn render_conversation(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
        now: Option<NaiveDateTime>,
    ) -> Result<String, TemplateError> {
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({ "role": m.role, "content": m.content }))
            .collect();
        let context = serde_json::json!({
            "messages": messages,
            "tools": null,
            "documents": null,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": bos_token,
            "eos_token": eos_token,
        });
        self.render_at(&context, now)
    }
}

/// llama.cpp's rule against a doubled BOS/EOS (common/chat.cpp, after applying the template):
/// when the tokenizer adds BOS itself (`add_bos`) and the rendered text starts with the BOS
/// text, that text is removed; likewise a trailing EOS text when it adds EOS.
pub fn strip_added_specials<'a>(
    rendered: &'a str,
    bos_token: &str,
    eos_token: &str,
    add_bos: bool,
    add_eos: bool,
) -> &'a str {
    let mut text = rendered;
    if add_bos {
        text = text.strip_prefix(bos_token).unwrap_or(text);
    }
    if add_eos {
        text = text.strip_suffix(eos_token).unwrap_or(text);
    }
    text
}

/// A minijinja error as a [`TemplateError`]: `raise_exception`'s message as it was given,
/// anything else as one line.
fn render_error(e: &Error) -> TemplateError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(raised) = c.downcast_ref::<Raised>() {
            return TemplateError::Raised(raised.0.clone());
        }
        cause = c.source();
    }
    if e.kind() == ErrorKind::OutOfFuel {
        return TemplateError::Render(format!(
            "the template ran more than {FUEL} instructions (an endless or enormous loop?)"
        ));
    }
    TemplateError::Render(one_line(e))
}

/// minijinja's message with its causes, on one line.
fn one_line(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        cause = c.source();
    }
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raise_exception_is_its_own_error() {
        let t = ChatTemplate::new("a{{ raise_exception('no system role') }}").unwrap();
        assert_eq!(
            t.render(&json!({})),
            Err(TemplateError::Raised("no system role".into()))
        );
    }

    #[test]
    fn context_must_be_an_object() {
        let t = ChatTemplate::new("x").unwrap();
        assert_eq!(
            t.render(&json!([1])),
            Err(TemplateError::Context("an array"))
        );
    }

    #[test]
    fn endless_loops_stop() {
        let t = ChatTemplate::new(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap();
        match t.render(&json!({})) {
            Err(TemplateError::Render(m)) => assert!(m.contains("instructions"), "{m}"),
            other => panic!("expected a fuel error, got {other:?}"),
        }
    }

    #[test]
    fn strip_added_specials_follows_llama_cpp() {
        let s = "<s>[INST] hi [/INST]</s>";
        assert_eq!(
            strip_added_specials(s, "<s>", "</s>", true, false),
            "[INST] hi [/INST]</s>"
        );
        assert_eq!(
            strip_added_specials(s, "<s>", "</s>", true, true),
            "[INST] hi [/INST]"
        );
        assert_eq!(strip_added_specials(s, "<s>", "</s>", false, false), s);
        // Only a leading BOS text: one in the middle is the template's business.
        assert_eq!(
            strip_added_specials("x<s>", "<s>", "</s>", true, false),
            "x<s>"
        );
        // Only once: a template that writes BOS twice keeps the second.
        assert_eq!(
            strip_added_specials("<s><s>x", "<s>", "</s>", true, false),
            "<s>x"
        );
    }

    #[test]
    fn unknown_builtin_names_the_known_ones() {
        let e = ChatTemplate::builtin("vicuna").unwrap_err();
        assert!(
            e.to_string().contains("chatml, llama2, llama3, zephyr"),
            "{e}"
        );
    }
}
