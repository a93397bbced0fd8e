//! `baremetal template` end to end: the exact prompt on stdout, `--now`, a template's refusal,
//! and one clear error line for each kind of bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::temp_dir;
use engine::fixtures::fixture;
use serde_json::{json, Value};

fn baremetal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baremetal"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exits 1 with exactly one line on stderr that contains every `needle`, nothing on stdout, and
/// no panic.
fn assert_clear_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1; stderr: {err}");
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line: {err}"
    );
    assert!(o.stdout.is_empty(), "stdout on failure: {:?}", o.stdout);
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn prints_jinja2s_rendering_byte_for_byte() {
    let Some(reference) = fixture("gguf/reference/chat_templates.json") else {
        return;
    };
    let rows: Value = serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let dir = temp_dir("template-exact");
    let mut checked = 0;
    for row in rows.as_array().unwrap() {
        let Some(want) = row["rendered"].as_str() else {
            continue;
        };
        let Some(template) = fixture(&format!(
            "gguf/templates/{}",
            row["template"].as_str().unwrap()
        )) else {
            return;
        };
        let ctx = write(&dir, "ctx.json", &row["context"].to_string());
        let o = baremetal(&[
            "template",
            "--template",
            s(&template),
            "--context",
            s(&ctx),
            "--now",
            "2024-07-26T12:00:00",
        ]);
        assert!(o.status.success(), "{}: {}", row["template"], stderr(&o));
        assert_eq!(
            String::from_utf8(o.stdout).unwrap(),
            want,
            "{} / {}",
            row["template"],
            row["case"]
        );
        checked += 1;
    }
    assert_eq!(
        checked, 26,
        "7 templates x 4 cases, less gemma's two refusals"
    );
}

#[test]
fn builtin_prints_the_prompt_without_a_newline() {
    let dir = temp_dir("template-builtin");
    let ctx = write(
        &dir,
        "ctx.json",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": true})
            .to_string(),
    );
    let o = baremetal(&["template", "--builtin", "chatml", "--context", s(&ctx)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // ChatML as defined: the turn, then an open assistant turn; nothing after its newline.
    assert_eq!(
        o.stdout,
        b"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn now_sets_strftime_now() {
    let dir = temp_dir("template-now");
    let t = write(
        &dir,
        "t.jinja",
        "Today Date: {{ strftime_now('%d %b %Y') }} {{ strftime_now('%H:%M') }}\n",
    );
    let ctx = write(&dir, "ctx.json", "{}");
    let o = baremetal(&[
        "template",
        "--template",
        s(&t),
        "--context",
        s(&ctx),
        "--now",
        "2025-03-09",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // jinja2 drops the template's single trailing newline.
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "Today Date: 09 Mar 2025 00:00"
    );
    let o = baremetal(&[
        "template",
        "--template",
        s(&t),
        "--context",
        s(&ctx),
        "--now",
        "2024-12-31T23:59:00",
    ]);
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "Today Date: 31 Dec 2024 23:59"
    );
}

#[test]
fn raise_exception_is_an_error_with_the_templates_message() {
    let Some(template) = fixture("gguf/templates/google-gemma-2-2b-it.jinja") else {
        return;
    };
    let dir = temp_dir("template-raise");
    let ctx = write(
        &dir,
        "ctx.json",
        &json!({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
                "bos_token": "<bos>", "add_generation_prompt": true})
        .to_string(),
    );
    let o = baremetal(&["template", "--template", s(&template), "--context", s(&ctx)]);
    assert_clear_error(&o, &["System role not supported"]);
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = temp_dir("template-bad");
    let good_ctx = write(&dir, "ctx.json", r#"{"messages": []}"#);
    let bad_json = write(&dir, "bad.json", r#"{"messages": ["#);
    let array = write(&dir, "array.json", "[1, 2]");
    let not_utf8 = write(&dir, "latin1.json", "");
    std::fs::write(&not_utf8, b"{\"a\": \"\xe9\"}").unwrap();
    let broken = write(&dir, "broken.jinja", "{% for m in messages %}");
    let undefined = write(&dir, "undef.jinja", "{{ nothing.here }}");
    let model = write(&dir, "model.gguf", "GGUF");
    let missing = dir.join("missing.json");

    let run = |args: &[&str]| baremetal(&[&["template"], args].concat());
    assert_clear_error(
        &run(&["--builtin", "chatml", "--context", s(&bad_json)]),
        &["bad.json", "not valid JSON", "line 1"],
    );
    assert_clear_error(
        &run(&["--builtin", "chatml", "--context", s(&missing)]),
        &["missing.json", "does not exist"],
    );
    assert_clear_error(
        &run(&["--template", s(&missing), "--context", s(&good_ctx)]),
        &["template file", "does not exist"],
    );
    assert_clear_error(
        &run(&["--builtin", "chatml", "--context", s(&array)]),
        &["array.json", "JSON object", "an array"],
    );
    assert_clear_error(
        &run(&["--builtin", "chatml", "--context", s(&not_utf8)]),
        &["latin1.json", "UTF-8"],
    );
    assert_clear_error(
        &run(&["--template", s(&broken), "--context", s(&good_ctx)]),
        &["broken.jinja", "does not compile"],
    );
    assert_clear_error(
        &run(&["--template", s(&undefined), "--context", s(&good_ctx)]),
        &["nothing", "undefined"],
    );
    assert_clear_error(
        &run(&["--builtin", "vicuna", "--context", s(&good_ctx)]),
        &["vicuna", "chatml, llama2, llama3, zephyr"],
    );
    assert_clear_error(
        &run(&[
            "--builtin",
            "chatml",
            "--context",
            s(&good_ctx),
            "--now",
            "2025-02-30",
        ]),
        &["2025-02-30", "YYYY-MM-DD"],
    );
    // A file that is not a usable GGUF: one clear line naming it.
    assert_clear_error(
        &run(&["--model", s(&model), "--context", s(&good_ctx)]),
        &["model.gguf", "not a usable GGUF file"],
    );
}
