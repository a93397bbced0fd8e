//! The `baremetal` binary end to end: reference output, and one clear error per bad input.

mod common;

use std::process::{Command, Output};

use common::*;
use engine::fixtures::fixture;
use model_config::{preset, CheckpointFormat, ModelConfig};

fn baremetal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baremetal"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exits non-zero with exactly one line on stderr that contains every `needle`, and no panic.
fn assert_clear_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
}

#[test]
fn generate_ids_reproduces_the_reference() {
    let Some(model) = stories260k() else { return };
    let Some(reference) = fixture("reference/stories260K_greedy256.json") else {
        return;
    };
    let want: Greedy = read_json(&reference);
    let mut runs = vec![vec!["--generic"]];
    if compiled_is_stories260k() {
        runs.push(vec![]);
    }
    for extra in runs {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--ids",
            "--temperature",
            "0",
            "--steps",
            "256",
        ];
        args.extend(extra.iter());
        let o = baremetal(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let got: Vec<u32> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want.tokens, "{extra:?}");
        assert!(stderr(&o).contains("tok/s"), "{}", stderr(&o));
    }
}

#[test]
fn inspect_prints_a_usable_config() {
    let Some(model) = stories260k() else { return };
    let o = baremetal(&["inspect", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let cfg = ModelConfig::from_toml_str(&text).unwrap();
    assert!(cfg.same_shape(&preset("stories260k").unwrap()), "{text}");
    assert!(text.contains("v0") && text.contains("tied"), "{text}");
}

#[test]
fn truncated_and_corrupt_checkpoints_are_refused() {
    let Some(model) = stories260k() else { return };
    let dir = temp_dir("cli-corrupt");
    let bytes = std::fs::read(&model).unwrap();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "truncated.bin",
            bytes[..bytes.len() - 1000].to_vec(),
            vec!["truncated", "1056540"],
        ),
        ("tiny.bin", bytes[..10].to_vec(), vec!["too short"]),
        ("empty.bin", vec![], vec!["too short"]),
        (
            "longer.bin",
            [bytes.as_slice(), &[0u8; 8]].concat(),
            vec!["longer than expected"],
        ),
        (
            "zero_layers.bin",
            patch(&bytes, 8, 0),
            vec!["n_layers", "positive"],
        ),
        (
            "neg_dim.bin",
            patch(&bytes, 0, -64),
            vec!["dim", "positive"],
        ),
        (
            "odd_heads.bin",
            patch(&bytes, 12, 7),
            vec!["divisible by n_heads"],
        ),
        (
            "kv_heads.bin",
            patch(&bytes, 16, 3),
            vec!["divisible by n_kv_heads"],
        ),
    ];
    for (name, data, needles) in cases {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        for cmd in [
            &["generate", "--ids", "--generic", "--model"][..],
            &["inspect"][..],
        ] {
            let mut args = cmd.to_vec();
            args.push(path.to_str().unwrap());
            let mut all = needles.clone();
            all.push(name);
            assert_clear_error(&baremetal(&args), &all);
        }
    }
    assert_clear_error(
        &baremetal(&["inspect", "/no/such/model.bin"]),
        &["/no/such/model.bin", "does not exist"],
    );
}

fn patch(bytes: &[u8], at: usize, value: i32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + 4].copy_from_slice(&value.to_le_bytes());
    b
}

#[test]
fn nan_weights_are_reported_not_printed() {
    let Some(model) = stories260k() else { return };
    let dir = temp_dir("cli-nan");
    let mut bytes = std::fs::read(&model).unwrap();
    // Poison the final RMSNorm weights (v0: just before the RoPE tables).
    let layout = model_config::CheckpointLayout::parse(&bytes[..256], bytes.len(), "x").unwrap();
    let at = layout.rms_final.offset;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = dir.join("nan.bin");
    std::fs::write(&path, bytes).unwrap();
    let o = baremetal(&[
        "generate",
        "--generic",
        "--ids",
        "--steps",
        "4",
        "--model",
        path.to_str().unwrap(),
    ]);
    assert_clear_error(&o, &["non-finite", "corrupt"]);
}

#[test]
fn shape_mismatch_names_both_shapes_and_the_rebuild_command() {
    let dir = temp_dir("cli-mismatch");
    let compiled = engine::runtime::backend::compiled_config();
    let mut other = preset("stories15m").unwrap();
    (
        other.dim,
        other.hidden_dim,
        other.n_layers,
        other.n_heads,
        other.n_kv_heads,
        other.seq_len,
    ) = (32, 40, 1, 4, 4, 16);
    other.vocab_size = 64;
    assert!(!other.same_shape(&compiled));
    let path = dir.join("other.bin");
    engine::format::synth::write_checkpoint(&other, CheckpointFormat::V0, 2, &path).unwrap();
    let o = baremetal(&[
        "generate",
        "--ids",
        "--steps",
        "3",
        "--model",
        path.to_str().unwrap(),
    ]);
    assert_clear_error(
        &o,
        &[
            "other.bin",
            "dim 32",
            &compiled.shape_summary(),
            "MODEL_CONFIG=",
            "cargo build --release",
            "--generic",
        ],
    );
    let o = baremetal(&[
        "generate",
        "--ids",
        "--steps",
        "3",
        "--generic",
        "--model",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Random weights may sample BOS (which ends generation) early, so only bound the count.
    let ids: Vec<u32> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(ids.len() <= 3 && ids.iter().all(|&t| t < 64), "{ids:?}");
}

#[test]
fn tokenizer_and_prompt_problems_are_clear_errors() {
    let Some(tok) = fixture("models/tokenizer.bin") else {
        return;
    };
    let dir = temp_dir("cli-tok");
    let model = tiny_32k(&dir, 8);
    let (m, t) = (model.to_str().unwrap(), tok.to_str().unwrap());

    // A tokenizer with fewer tokens than the model's vocabulary.
    let short = dir.join("short_tokenizer.bin");
    let bytes = std::fs::read(&tok).unwrap();
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    let o = baremetal(&[
        "generate",
        "--generic",
        "--model",
        m,
        "--tokenizer",
        short.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_clear_error(&o, &["short_tokenizer.bin"]);

    // A tokenizer with more tokens than the model's vocabulary (stories260K has 512).
    if let Some(small) = stories260k() {
        let o = baremetal(&[
            "generate",
            "--generic",
            "--model",
            small.to_str().unwrap(),
            "--tokenizer",
            t,
        ]);
        assert_clear_error(&o, &["tokenizer.bin", "more tokens", "512"]);
    }

    // A prompt longer than the context (8 positions).
    let long = "Once upon a time there was a little girl named Lily who loved to play outside.";
    let o = baremetal(&[
        "generate",
        "--generic",
        "--model",
        m,
        "--tokenizer",
        t,
        "--prompt",
        long,
    ]);
    assert_clear_error(&o, &["prompt", "8"]);

    // Too many steps: clamped with a notice, and the run succeeds.
    let o = baremetal(&[
        "generate",
        "--generic",
        "--ids",
        "--temperature",
        "0",
        "--model",
        m,
        "--steps",
        "100",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not fit"), "{}", stderr(&o));
    let n = String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .count();
    assert!(n <= 8, "generated {n} tokens in a context of 8");

    // Text without a tokenizer, and a prompt without a tokenizer.
    assert_clear_error(
        &baremetal(&["generate", "--generic", "--model", m]),
        &["--tokenizer"],
    );
    assert_clear_error(
        &baremetal(&[
            "generate",
            "--generic",
            "--ids",
            "--model",
            m,
            "--prompt",
            "x",
        ]),
        &["--tokenizer"],
    );
}

#[test]
fn bad_flags_are_clear_errors() {
    let dir = temp_dir("cli-flags");
    let model = tiny_32k(&dir, 16);
    let m = model.to_str().unwrap();
    for (flag, value) in [
        ("--steps", "many"),
        ("--temperature", "hot"),
        ("--seed", "-1"),
        ("--top-p", "x"),
        ("--steps", "-3"),
    ] {
        let o = baremetal(&["generate", "--generic", "--ids", "--model", m, flag, value]);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains(value) && err.contains(flag), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    for (flag, value) in [("--temperature", "-1"), ("--top-p", "1.5")] {
        let o = baremetal(&["generate", "--generic", "--ids", "--model", m, flag, value]);
        assert_clear_error(&o, &[]);
    }
    for cmd in ["generate", "bench", "eval"] {
        let o = baremetal(&[cmd, "--model", m, "--kv-cache", "f8"]);
        assert_clear_error(&o, &["--kv-cache", "f8", "f32 or f16"]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
    }
    let o = baremetal(&[
        "generate",
        "--generic",
        "--ids",
        "--model",
        m,
        "--steps",
        "4",
        "--kv-cache",
        "f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `bench --json` carries the keys scripts rely on, with numbers in them; `--csv` has a row
/// per timed prompt run, decode token and beam step.
#[test]
fn bench_reports_prompt_decode_and_beam_figures() {
    let Some(model) = stories260k() else { return };
    let dir = temp_dir("bench-json");
    let csv = dir.join("lat.csv");
    let o = baremetal(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "8",
        "--warmup",
        "1",
        "--prompt-tokens",
        "20",
        "--batch",
        "7",
        "--beam",
        "3",
        "--threads",
        "1",
        "--json",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "prompt_tokens_per_second",
        "ttft_ms",
        "tokens_per_second",
        "beam_step_ratio",
        "beam_step_ms",
        "greedy_step_ms",
    ] {
        let v = j[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is not a number: {j}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(j["prompt_tokens"], 20);
    assert_eq!(j["batch"], 7);
    assert_eq!(j["beam"], 3);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("phase,index,latency_us"));
    let phases: Vec<&str> = lines.map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(phases.iter().filter(|&&p| p == "prompt").count(), 3);
    assert_eq!(phases.iter().filter(|&&p| p == "decode").count(), 8);
    assert!(phases.iter().filter(|&&p| p == "beam").count() >= 1);
    std::fs::remove_dir_all(dir).ok();
}
