//! Chat templates against Python's jinja2, set up as Hugging Face's `apply_chat_template` sets it
//! up. Two sources of expected output, neither of them this code:
//! - `../shared/gguf/reference/chat_templates.json`: seven real models' templates, four
//!   conversations each (see `../shared/gguf/README.md`);
//! - `tests/data/chat_template_cases.json`: written by `scripts/chat_template_cases.py` with
//!   jinja2 — one construct per snippet, invented conversations (tool calls, multi-turn, refusals)
//!   through the same real templates, the built-in templates, and `strftime` formats.

use std::path::Path;

use chrono::NaiveDateTime;
use engine::fixtures::fixture;
use engine::text::chat_template::{
    builtin_source, strftime, ChatTemplate, Message, TemplateError, BUILTIN_TEMPLATES,
};
use serde_json::{json, Value};

fn now(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cases() -> Value {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_template_cases.json"))
}

/// Constructs where minijinja cannot follow jinja2 (listed in the module docs of
/// `engine::text::chat_template`): each must still differ, so a fix upstream is noticed.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    ("unary_plus", "minijinja's parser has no unary `+` (a syntax error, not a wrong text)"),
    (
        "percent_format",
        "minijinja has no Python `%` string formatting operator (an error; the `format` filter works)",
    ),
    (
        "iterate_none",
        "minijinja iterates none as an empty sequence where jinja2 raises TypeError (a template that \
         loops over a null `content` renders instead of failing)",
    ),
    ("none_list", "as iterate_none: `none|list` is [] rather than jinja2's TypeError"),
    (
        "mixed_type_compare",
        "minijinja orders values of different types where Python raises TypeError",
    ),
    (
        "tilde_float",
        "`~` (and other string conversion inside minijinja) writes floats from 1e16 up in full \
         (`100000000000000000000.0`), not as Python's `1e+20`; printing with {{ }} is right",
    ),
    (
        "string_named_escape",
        "`\\N{name}` escapes in string literals stay as written (Unicode's name table is not carried)",
    ),
];

/// Compares one rendering with jinja2's recorded outcome; `None` when they agree. An `error`
/// with `raised` true (or no `raised`: the shared fixture records only refusals) must be
/// `raise_exception`'s message; with `raised` false any failure will do.
fn check(got: &Result<String, TemplateError>, want: &Value) -> Option<String> {
    let raised = want.get("raised").is_none_or(|r| r == &json!(true));
    match (got, want.get("rendered"), want.get("error")) {
        (Ok(text), Some(Value::String(expected)), _) if text == expected => None,
        (Err(TemplateError::Raised(m)), None, Some(Value::String(expected)))
            if raised && m == expected =>
        {
            None
        }
        (Err(TemplateError::Syntax(_) | TemplateError::Render(_)), None, Some(_)) if !raised => {
            None
        }
        (got, _, _) => Some(format!(
            "got {got:?}\n    jinja2: {}",
            want.get("rendered").unwrap_or(&want["error"])
        )),
    }
}

/// Runs `rows` through `render` and fails listing every disagreement, known differences apart.
fn compare(
    rows: &[Value],
    label: impl Fn(&Value) -> String,
    render: impl Fn(&Value) -> Option<Result<String, TemplateError>>,
) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in rows {
        let name = label(row);
        let Some(got) = render(row) else { continue };
        checked += 1;
        let mismatch = check(&got, row);
        match KNOWN_DIFFERENCES.iter().find(|(n, _)| *n == name) {
            Some((_, why)) if mismatch.is_some() => eprintln!("known difference {name}: {why}"),
            Some(_) => failures.push(format!(
                "{name}: listed as a known difference but now agrees with jinja2"
            )),
            None => {
                if let Some(m) = mismatch {
                    failures.push(format!("{name}: {m}"));
                }
            }
        }
    }
    assert!(checked > 0, "nothing was compared");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ from jinja2:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn render_row(source: &str, row: &Value) -> Result<String, TemplateError> {
    let t = ChatTemplate::new(source)?;
    t.render_at(&row["context"], Some(now(row["now"].as_str().unwrap())))
}

#[test]
fn real_templates_match_the_reference_renderings() {
    let Some(reference) = fixture("gguf/reference/chat_templates.json") else {
        return;
    };
    let rows = read(&reference);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 28, "the fixture has 7 templates x 4 cases");
    let fixed = now("2024-07-26T12:00:00");
    compare(
        rows,
        |r| format!("{} / {}", r["template"], r["case"]),
        |r| {
            let path = fixture(&format!(
                "gguf/templates/{}",
                r["template"].as_str().unwrap()
            ))?;
            let source = std::fs::read_to_string(path).unwrap();
            let t = match ChatTemplate::new(&source) {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            // Each row as given, and once more through render_conversation when the context is
            // a plain conversation: both must give jinja2's text.
            let given = t.render_at(&r["context"], Some(fixed));
            let ctx = &r["context"];
            let messages: Vec<Message> = ctx["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let conv = t.render_conversation(
                &messages,
                ctx["add_generation_prompt"].as_bool().unwrap(),
                ctx["bos_token"].as_str().unwrap(),
                ctx["eos_token"].as_str().unwrap(),
                Some(fixed),
            );
            assert_eq!(given, conv, "render_conversation differs from render");
            Some(given)
        },
    );
}

#[test]
fn snippets_match_jinja2() {
    let cases = cases();
    compare(
        cases["snippets"].as_array().unwrap(),
        |r| r["name"].as_str().unwrap().to_string(),
        |r| Some(render_row(r["template"].as_str().unwrap(), r)),
    );
}

#[test]
fn invented_conversations_through_real_templates_match_jinja2() {
    let cases = cases();
    compare(
        cases["conversations"].as_array().unwrap(),
        |r| format!("{} / {}", r["template"], r["case"]),
        |r| {
            let path = fixture(&format!(
                "gguf/templates/{}",
                r["template"].as_str().unwrap()
            ))?;
            Some(render_row(&std::fs::read_to_string(path).unwrap(), r))
        },
    );
}

#[test]
fn builtin_templates_match_jinja2() {
    let cases = cases();
    let rows = cases["builtins"].as_array().unwrap();
    // Every built-in template was rendered by the script (a new one needs the script re-run).
    for (name, _) in BUILTIN_TEMPLATES {
        let file = format!("{name}.jinja");
        assert!(
            rows.iter().any(|r| r["template"] == json!(file)),
            "{file} is missing from chat_template_cases.json: run scripts/chat_template_cases.py"
        );
    }
    compare(
        rows,
        |r| format!("{} / {}", r["template"], r["case"]),
        |r| {
            let name = r["template"].as_str().unwrap().trim_end_matches(".jinja");
            Some(render_row(builtin_source(name).unwrap(), r))
        },
    );
}

#[test]
fn strftime_matches_python() {
    let cases = cases();
    let mut failures = Vec::new();
    let rows = cases["strftime"].as_array().unwrap();
    assert!(rows.len() > 40);
    for r in rows {
        let t = now(r["now"].as_str().unwrap());
        let fmt = r["format"].as_str().unwrap();
        let got = strftime(&t, fmt);
        if got != r["rendered"].as_str().unwrap() {
            failures.push(format!(
                "{t} {fmt:?}: got {got:?}, Python {}",
                r["rendered"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A conversation with a system prompt, one exchange and a second question.
fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You are terse."),
        Message::new("user", "Hi there"),
        Message::new("assistant", "Hello."),
        Message::new("user", "What is 2+2?"),
    ]
}

fn builtin(name: &str, messages: &[Message], prompt: bool, bos: &str, eos: &str) -> String {
    ChatTemplate::builtin(name)
        .unwrap()
        .render_conversation(messages, prompt, bos, eos, None)
        .unwrap()
}

// The expected strings below are written out from each format's public definition (cited in
// `BUILTIN_TEMPLATES`' docs), not taken from the templates' output.

#[test]
fn chatml_is_chatml() {
    assert_eq!(
        builtin("chatml", &conversation(), true, "<s>", "</s>"),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nHi there<|im_end|>\n\
         <|im_start|>assistant\nHello.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        builtin("chatml", &conversation()[1..3], false, "<s>", "</s>"),
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    );
}

#[test]
fn llama2_is_metas_chat_format() {
    // generation.py: B_SYS + system + E_SYS is prepended to the first user content; each
    // (prompt, answer) pair is bos + "[INST] {prompt.strip()} [/INST] {answer.strip()} " + eos,
    // and the final prompt is bos + "[INST] {prompt.strip()} [/INST]".
    assert_eq!(
        builtin("llama2", &conversation(), true, "<s>", "</s>"),
        "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello. </s>\
         <s>[INST] What is 2+2? [/INST]"
    );
    assert_eq!(
        builtin(
            "llama2",
            &[Message::new("user", "  padded  ")],
            false,
            "<s>",
            "</s>"
        ),
        "<s>[INST] padded [/INST]"
    );
    let refused = ChatTemplate::builtin("llama2")
        .unwrap()
        .render_conversation(
            &[Message::new("user", "a"), Message::new("user", "b")],
            true,
            "<s>",
            "</s>",
            None,
        );
    assert_eq!(
        refused,
        Err(TemplateError::Raised(
            "Conversation roles must alternate user/assistant/user/assistant/...".into()
        ))
    );
}

#[test]
fn llama3_is_metas_chat_format() {
    // ChatFormat: <|begin_of_text|>, then per message
    // <|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>, and an empty
    // assistant header to generate from.
    assert_eq!(
        builtin(
            "llama3",
            &conversation(),
            true,
            "<|begin_of_text|>",
            "<|eot_id|>"
        ),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn zephyr_is_zephyrs_format() {
    // zephyr-7b-beta's model card: "<|system|>\n{system}</s>\n<|user|>\n{prompt}</s>\n<|assistant|>\n".
    assert_eq!(
        builtin("zephyr", &conversation()[..2], true, "<s>", "</s>"),
        "<|system|>\nYou are terse.</s>\n<|user|>\nHi there</s>\n<|assistant|>\n"
    );
}

#[test]
fn strftime_now_uses_the_given_time_or_the_clock() {
    let t = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}").unwrap();
    assert_eq!(
        t.render_at(&json!({}), Some(now("2025-03-09T08:00:00")))
            .unwrap(),
        "09 Mar 2025"
    );
    // Without a time: today's local date, read on each side of the render so that midnight
    // cannot make the test flaky.
    let before = chrono::Local::now()
        .naive_local()
        .format("%d %b %Y")
        .to_string();
    let got = t.render(&json!({})).unwrap();
    let after = chrono::Local::now()
        .naive_local()
        .format("%d %b %Y")
        .to_string();
    assert!(
        got == before || got == after,
        "{got} not {before} / {after}"
    );
}

#[test]
fn context_keys_keep_their_order_in_tojson() {
    // Python dicts keep insertion order; a sorted map would print "a" first.
    let ctx: Value = serde_json::from_str(r#"{"tool": {"z": 1, "a": 2}}"#).unwrap();
    let t = ChatTemplate::new("{{ tool|tojson }}").unwrap();
    assert_eq!(t.render(&ctx).unwrap(), r#"{"z": 1, "a": 2}"#);
}

#[test]
fn huge_outputs_are_errors_not_aborts() {
    let t = ChatTemplate::new("{{ 'ab' * 100000000000000 }}").unwrap();
    assert!(t.render(&json!({})).is_err());
}

#[test]
fn deeply_nested_values_are_errors_not_aborts() {
    // 300k levels, built one per loop step (the main thread's stack gives out near 90k):
    // dropping or printing such a value recurses once per level, which must neither overflow the
    // stack nor run unbounded.
    let build = "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% for j in range(3) %}\
                 {% set ns.x = [ns.x] %}{% endfor %}{% endfor %}";
    for (tail, ok) in [
        ("{{ ns.x|length }}", true),
        ("{{ ns.x }}", false),
        ("{{ ns.x|tojson }}", false),
    ] {
        let t = ChatTemplate::new(&format!("{build}{tail}")).unwrap();
        let got = t.render(&json!({}));
        assert_eq!(got.is_ok(), ok, "{tail}: {got:?}");
    }
}
