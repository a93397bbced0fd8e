//! The text commands on GGUF files through the binary: `tokenize` against llama.cpp's vectors,
//! `generate` with the model's own tokenizer against llama.cpp's greedy ids, and `chat` keeping
//! its KV cache across turns with the same result as a fresh run of the whole conversation.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use engine::fixtures::fixture;
use engine::runtime::backend::compiled_config;
use engine::{Model, Realign};

fn baremetal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baremetal"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// `--generic` unless this binary was compiled for the model's shape (CI builds one that is).
fn kernels_for(model: &Path) -> Vec<&'static str> {
    let m = Model::open(model, Realign::IfMisaligned).unwrap();
    if m.config().same_shape(&compiled_config()) {
        vec![]
    } else {
        vec!["--generic"]
    }
}

#[test]
fn tokenize_prints_llama_cpps_ids() {
    for (name, bos) in [
        ("llama-spm", Some(1)),
        ("llama-bpe", Some(128000)),
        ("gpt-2", None),
    ] {
        let Some(vocab) = fixture(&format!("gguf/vocab/ggml-vocab-{name}.gguf")) else {
            return;
        };
        let inp = std::fs::read_to_string(vocab.with_extension("gguf.inp")).unwrap();
        let out = std::fs::read_to_string(vocab.with_extension("gguf.out")).unwrap();
        let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
        let v = vocab.to_str().unwrap();
        // A few cases through the binary: plain, spaces only, non-ASCII, code.
        for i in [0, 4, 20, 30, out.lines().count() - 1] {
            let want = out.lines().nth(i).unwrap().trim();
            let got = ok(&baremetal(&[
                "tokenize", "--model", v, "--no-bos", texts[i],
            ]));
            assert_eq!(got.trim(), want, "{name} case {i}: {:?}", texts[i]);
            let with_bos = ok(&baremetal(&["tokenize", "--model", v, texts[i]]));
            let want_bos = match bos {
                Some(b) => format!("{b} {want}"),
                None => want.to_string(),
            };
            assert_eq!(with_bos.trim(), want_bos.trim(), "{name} case {i} with BOS");
        }
        let j = ok(&baremetal(&[
            "tokenize",
            "--model",
            v,
            "--json",
            "--no-bos",
            "Hello world",
        ]));
        let j: serde_json::Value = serde_json::from_str(&j).unwrap();
        let pieces: String = j["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(pieces.trim_start(), "Hello world", "{name}");
    }
}

#[test]
fn tokenize_refuses_bad_input_clearly() {
    let o = baremetal(&["tokenize", "--model", "/nonexistent.gguf", "x"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent.gguf") && !err.contains("panicked"),
        "{err}"
    );
    let Some(model) = fixture("models/stories260K.bin") else {
        return;
    };
    let o = baremetal(&["tokenize", "--model", model.to_str().unwrap(), "x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--tokenizer"), "{err}");
}

/// `generate` on a GGUF needs no tokenizer file: an empty prompt is the vocabulary's BOS, and
/// greedy decoding gives llama.cpp's ids.
#[test]
fn generate_uses_the_gguf_tokenizer_and_matches_llama_cpp() {
    let (Some(model), Some(reference)) = (
        fixture("gguf/models/stories260K-f32.gguf"),
        fixture("gguf/reference/stories260K-f32.greedy256.json"),
    ) else {
        return;
    };
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let want: Vec<u64> = want["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let m = model.to_str().unwrap();
    let mut args = vec![
        "generate",
        "--model",
        m,
        "--temperature",
        "0",
        "--steps",
        "64",
        "--ids",
    ];
    args.extend(kernels_for(&model));
    let got: Vec<u64> = ok(&baremetal(&args))
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(got, want[..64]);
    // As text (the filler vocabulary means nothing, but the pieces are its tokens').
    args.retain(|a| *a != "--ids");
    let text = ok(&baremetal(&args));
    assert!(text.contains("t") && !text.is_empty());
}

/// Two chat turns reusing the cache give the same second reply as generating from the whole
/// rendered conversation in one go.
#[test]
fn chat_reuses_the_cache_and_matches_a_fresh_run() {
    let Some(model) = fixture("gguf/models/synth-llama3-q8_0.gguf") else {
        return;
    };
    let m = model.to_str().unwrap();
    let kernels = kernels_for(&model);
    let mut args = vec![
        "chat",
        "--model",
        m,
        "--temperature",
        "0",
        "--max-tokens",
        "6",
        "--system",
        "Be brief.",
    ];
    args.extend(&kernels);
    let mut child = Command::new(env!("CARGO_BIN_EXE_baremetal"))
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello there\nTell me more\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    let replies: Vec<&str> = out.split_terminator('\n').collect();
    assert_eq!(replies.len(), 2, "two replies on two lines: {out:?}");
    let turn2 = err.lines().find(|l| l.contains("[turn 2:")).expect(&err);
    let reused: usize = turn2
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect(turn2);
    assert!(reused > 20, "turn 2 reused {reused} cached tokens: {turn2}");

    // The same conversation rendered by `template`, fed whole to `generate`.
    let dir = std::env::temp_dir().join(format!("bm_chat_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ctx = dir.join("ctx.json");
    let context = serde_json::json!({
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": replies[0]},
            {"role": "user", "content": "Tell me more"},
        ],
        "add_generation_prompt": true,
        "bos_token": "<s>",
        "eos_token": "</s>",
    });
    std::fs::write(&ctx, context.to_string()).unwrap();
    let rendered = ok(&baremetal(&[
        "template",
        "--model",
        m,
        "--context",
        ctx.to_str().unwrap(),
    ]));
    let prompt = rendered.strip_prefix("<s>").unwrap_or(&rendered);
    let mut args = vec![
        "generate",
        "--model",
        m,
        "--prompt",
        prompt,
        "--parse-special",
        "--temperature",
        "0",
        "--steps",
        "6",
    ];
    args.extend(&kernels);
    let fresh = ok(&baremetal(&args));
    assert!(
        fresh.trim_end_matches('\n').ends_with(replies[1]),
        "fresh run {fresh:?} does not end with the chat's reply {:?}",
        replies[1]
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_vocabulary_of_another_size_is_refused() {
    let (Some(model), Some(vocab)) = (
        fixture("gguf/models/stories260K-f32.gguf"),
        fixture("gguf/vocab/ggml-vocab-llama-spm.gguf"),
    ) else {
        return;
    };
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        vocab.to_str().unwrap(),
        "--prompt",
        "hi",
    ];
    args.extend(kernels_for(&model));
    let o = baremetal(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("32000 tokens") && err.contains("vocabulary of 512"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// `tokenize` on llama2.c's tokenizer.bin: the Llama 2 ids of "Once upon a time" (BOS 1, then
/// ▁Once 9038, ▁upon 2501, ▁a 263, ▁time 931), as the llama-spm GGUF vocabulary gives them too.
#[test]
fn tokenize_reads_llama2c_tokenizers_too() {
    let (Some(tok), Some(vocab)) = (
        fixture("models/tokenizer.bin"),
        fixture("gguf/vocab/ggml-vocab-llama-spm.gguf"),
    ) else {
        return;
    };
    let bin = ok(&baremetal(&[
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "Once upon a time",
    ]));
    assert_eq!(bin.trim(), "1 9038 2501 263 931");
    let gguf = ok(&baremetal(&[
        "tokenize",
        "--model",
        vocab.to_str().unwrap(),
        "Once upon a time",
    ]));
    assert_eq!(gguf, bin);
    let no_bos = ok(&baremetal(&[
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--no-bos",
        "Once upon a time",
    ]));
    assert_eq!(no_bos.trim(), "9038 2501 263 931");
}
