//! GGUF models against llama.cpp's own outputs on them (../shared/gguf/reference, made by
//! llama.cpp's libllama: one token per decode, f32 KV cache), as TOLERANCE.md says: F32 files
//! give llama.cpp's greedy ids; every file's teacher-forced top-5 logits are within the
//! type's tolerance of the largest |logit|, and the argmax agrees wherever llama.cpp's top-2
//! margin exceeds twice that. On the generic kernels, and on the specialised ones when the
//! binary was compiled for the model's shape. Plus one clear error per kind of bad file.

mod common;

use std::path::Path;

use common::*;
use engine::decode::sampler::argmax;
use engine::fixtures::fixture;
use engine::runtime::backend::compiled_config;
use engine::{Backend, Model, Realign, Session};
use serde::Deserialize;

#[derive(Deserialize)]
struct Greedy256 {
    tokens: Vec<u32>,
    top5: Vec<Vec<(u32, f32)>>,
}

#[derive(Deserialize)]
struct Forced {
    input: Vec<u32>,
    argmax: Vec<u32>,
    top5: Vec<Vec<(u32, f32)>>,
}

/// TOLERANCE.md's factor of the largest |logit| for the file's weight type.
fn tolerance(file: &str) -> f32 {
    if file.contains("f32") {
        0.001
    } else if file.contains("f16") || file.contains("bf16") {
        0.01
    } else if file.contains("q8_0") {
        0.03
    } else {
        0.06
    }
}

fn backends(model: &Model) -> Vec<Backend> {
    let mut all = vec![
        Backend::generic(None).unwrap(),
        Backend::generic(None).unwrap().with_threads(2),
    ];
    if model.config().same_shape(&compiled_config()) {
        let s = || {
            Backend::specialised(model.config(), model.path(), None)
                .unwrap()
                .unwrap()
        };
        all.push(s());
        all.push(s().with_threads(2));
    }
    all
}

/// Checks logits against llama.cpp's top-5 at one position.
fn check_position(what: &str, got: &[f32], top5: &[(u32, f32)], tol: f32) {
    for &(id, want) in top5 {
        let diff = (got[id as usize] - want).abs();
        assert!(
            diff <= tol,
            "{what}: logit of {id} is {} vs llama.cpp's {want} (off {diff} > {tol})",
            got[id as usize]
        );
    }
    if top5[0].1 - top5[1].1 > 2.0 * tol {
        assert_eq!(argmax(got), top5[0].0, "{what}: argmax");
    }
}

/// Largest |logit| of a reference.
fn scale(top5: &[Vec<(u32, f32)>]) -> f32 {
    top5.iter()
        .flatten()
        .fold(0.0f32, |m, &(_, v)| m.max(v.abs()))
}

#[test]
fn stories260k_gguf_files_match_llama_cpp() {
    for name in ["f32", "f16", "q8_0", "q4_0"] {
        let file = format!("stories260K-{name}.gguf");
        let (Some(path), Some(reference)) = (
            fixture(&format!("gguf/models/{file}")),
            fixture(&format!("gguf/reference/stories260K-{name}.greedy256.json")),
        ) else {
            return;
        };
        let want: Greedy256 = read_json(&reference);
        let model = Model::open(&path, Realign::IfMisaligned).unwrap();
        let tol = tolerance(&file) * scale(&want.top5);
        for backend in backends(&model) {
            let what = format!("{file} on {}", backend.describe());
            let mut s = Session::new(&model, backend);
            // Teacher-forced over llama.cpp's own greedy run: BOS, then its tokens.
            let inputs: Vec<u32> = std::iter::once(1)
                .chain(want.tokens.iter().copied())
                .collect();
            let mut ids = Vec::new();
            for (pos, &input) in inputs.iter().take(want.tokens.len()).enumerate() {
                let logits = s.step(input).unwrap();
                if let Some(top5) = want.top5.get(pos) {
                    check_position(&format!("{what} position {pos}"), logits, top5, tol);
                }
                ids.push(argmax(logits));
            }
            if name == "f32" {
                assert_eq!(ids, want.tokens, "{what}: greedy ids");
            }
        }
    }
}

#[test]
fn synthesised_llama3_gguf_files_match_llama_cpp() {
    for name in ["f16", "q8_0", "q4_k_m", "q6_k"] {
        let file = format!("synth-llama3-{name}.gguf");
        let (Some(path), Some(reference)) = (
            fixture(&format!("gguf/models/{file}")),
            fixture(&format!("gguf/reference/synth-llama3-{name}.forced48.json")),
        ) else {
            return;
        };
        let want: Forced = read_json(&reference);
        let model = Model::open(&path, Realign::IfMisaligned).unwrap();
        assert!(
            model.config().rope_freq_factors.is_some(),
            "Llama 3.1 rope_freqs"
        );
        assert!(!model.config().shared_classifier, "output.weight is stored");
        let tol = tolerance(&file) * scale(&want.top5);
        for backend in backends(&model) {
            let what = format!("{file} on {}", backend.describe());
            let mut s = Session::new(&model, backend);
            for (pos, &input) in want.input.iter().enumerate() {
                let logits = s.step(input).unwrap();
                check_position(
                    &format!("{what} position {pos}"),
                    logits,
                    &want.top5[pos],
                    tol,
                );
                if want.top5[pos][0].1 - want.top5[pos][1].1 > 2.0 * tol {
                    assert_eq!(argmax(logits), want.argmax[pos], "{what} position {pos}");
                }
            }
        }
    }
}

/// A prompt in batched chunks gives the same logits as token by token on a GGUF model too.
#[test]
fn gguf_prompts_are_batch_invariant() {
    let Some(path) = fixture("gguf/models/synth-llama3-q4_k_m.gguf") else {
        return;
    };
    let model = Model::open(&path, Realign::IfMisaligned).unwrap();
    let prompt: Vec<u32> = (0..19).map(|i| 1 + 977 * i % 31999).collect();
    let mut one = Session::new(&model, Backend::generic(None).unwrap());
    let mut want = Vec::new();
    for &t in &prompt {
        want = one.step(t).unwrap().to_vec();
    }
    let options = engine::runtime::session::SessionOptions {
        batch: 8,
        ..Default::default()
    };
    let mut s = Session::with_options(&model, Backend::generic(None).unwrap(), options);
    let got = s.prefill(&prompt).unwrap();
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

// ---------------------------------------------------------------------------------------
// Bad files: one clear error each.
// ---------------------------------------------------------------------------------------

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// A small llama GGUF: dim 32, hidden 64, 1 layer, 2 heads (1 kv), vocab 4; `edit` may change
/// the metadata or tensors before writing.
fn tiny_gguf(
    edit: impl FnOnce(&mut Vec<(String, u32, Vec<u8>)>, &mut Vec<(String, Vec<u64>, u32, Vec<u8>)>),
) -> Vec<u8> {
    let u32v = |v: u32| v.to_le_bytes().to_vec();
    let mut kv: Vec<(String, u32, Vec<u8>)> = vec![
        ("general.architecture".into(), 8, string("llama")),
        ("llama.context_length".into(), 4, u32v(16)),
        ("llama.embedding_length".into(), 4, u32v(32)),
        ("llama.block_count".into(), 4, u32v(1)),
        ("llama.feed_forward_length".into(), 4, u32v(64)),
        ("llama.attention.head_count".into(), 4, u32v(2)),
        ("llama.attention.head_count_kv".into(), 4, u32v(1)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            6,
            1e-5f32.to_le_bytes().to_vec(),
        ),
    ];
    let f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((i % 7) as f32 * 0.1 - 0.3).to_le_bytes())
            .collect()
    };
    let mut t: Vec<(String, Vec<u64>, u32, Vec<u8>)> = vec![
        ("token_embd.weight".into(), vec![32, 4], 0, f32s(128)),
        ("output_norm.weight".into(), vec![32], 0, f32s(32)),
        ("blk.0.attn_norm.weight".into(), vec![32], 0, f32s(32)),
        ("blk.0.attn_q.weight".into(), vec![32, 32], 0, f32s(1024)),
        ("blk.0.attn_k.weight".into(), vec![32, 16], 0, f32s(512)),
        ("blk.0.attn_v.weight".into(), vec![32, 16], 0, f32s(512)),
        (
            "blk.0.attn_output.weight".into(),
            vec![32, 32],
            0,
            f32s(1024),
        ),
        ("blk.0.ffn_norm.weight".into(), vec![32], 0, f32s(32)),
        ("blk.0.ffn_gate.weight".into(), vec![32, 64], 0, f32s(2048)),
        ("blk.0.ffn_down.weight".into(), vec![64, 32], 0, f32s(2048)),
        ("blk.0.ffn_up.weight".into(), vec![32, 64], 0, f32s(2048)),
    ];
    edit(&mut kv, &mut t);
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(t.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, ty, v) in &kv {
        out.extend(string(k));
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(v);
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in &t {
        out.extend(string(name));
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + data.len() as u64).next_multiple_of(32);
    }
    out.resize(out.len().next_multiple_of(32), 0);
    for (_, _, _, data) in &t {
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(32), 0);
    }
    out
}

fn open_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    match Model::open(&path, Realign::Never) {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Found by fuzzing: f32 matrices with a quantised token embedding that is also the classifier
/// (no `output.weight`) made the classifier's GEMV panic for want of a quantised input.
#[test]
fn a_quantised_tied_embedding_with_f32_matrices_runs() {
    let dir = temp_dir("gguf-tied-q8");
    for (type_id, block) in [(8u32, 34usize), (2, 18)] {
        // 4 rows of 32 values: one block per row, an f16 scale of 0.01 and varied quants.
        let mut blocks = Vec::new();
        for r in 0..4 {
            blocks.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            blocks.extend((0..block - 2).map(|i| ((i * 7 + r * 3) % 31) as u8));
        }
        let bytes = tiny_gguf(|_, t| {
            t[0].2 = type_id;
            t[0].3 = blocks;
        });
        let path = dir.join(format!("tied-{type_id}.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        let model = Model::open(&path, Realign::Never).unwrap();
        let mut s = Session::new(&model, Backend::generic(None).unwrap());
        let logits = s.step(1).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "type {type_id}");
        assert!(logits.iter().any(|&v| v != logits[0]), "type {type_id}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_gguf_files_are_refused_with_one_clear_error() {
    let dir = temp_dir("gguf-bad");
    // The tiny model itself loads and runs.
    let good = tiny_gguf(|_, _| {});
    let path = dir.join("good.gguf");
    std::fs::write(&path, &good).unwrap();
    let model = Model::open(&path, Realign::Never).unwrap();
    let mut s = Session::new(&model, Backend::generic(None).unwrap());
    assert!(s.step(1).unwrap().iter().all(|v| v.is_finite()));

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() - 40].to_vec(),
            "past the end",
        ),
        (
            // The last tensor claims 8 GiB: its data would end far past the file.
            "tensor-past-end",
            tiny_gguf(|_, t| t.last_mut().unwrap().1 = vec![32, 64 << 20]),
            "lie past the end of the",
        ),
        (
            // Dimensions whose product overflows u64.
            "dims-overflow",
            tiny_gguf(|_, t| t.last_mut().unwrap().1 = vec![1 << 40, 1 << 40]),
            "its size overflows",
        ),
        (
            // 2^62 f32 values: 2^64 bytes, which wraps to 0 in u64 arithmetic (found by fuzzing).
            "bytes-overflow",
            tiny_gguf(|_, t| t.last_mut().unwrap().1 = vec![1 << 31, 1 << 31]),
            "its size in bytes overflows",
        ),
        (
            "magic",
            [b"GGUX".as_slice(), &good[4..]].concat(),
            "not a usable llama2.c checkpoint",
        ),
        (
            "arch",
            tiny_gguf(|kv, _| kv[0].2 = string("mamba")),
            "architecture is `mamba`",
        ),
        (
            "missing-key",
            tiny_gguf(|kv, _| kv.retain(|k| k.0 != "llama.block_count")),
            "`llama.block_count` is missing",
        ),
        (
            "count",
            {
                let mut b = good.clone();
                b[16..24].copy_from_slice(&(1u64 << 58).to_le_bytes());
                b
            },
            "metadata count",
        ),
        (
            "type",
            tiny_gguf(|_, t| t[3].2 = 77),
            "tensor `blk.0.attn_q.weight` has type id 77",
        ),
        (
            "unsupported-type",
            // Q5_1: blocks of 32 in 24 bytes, a type ggml has and baremetal does not run.
            tiny_gguf(|_, t| {
                t[8].2 = 7;
                t[8].3 = vec![0; 64 * 24];
            }),
            "tensor `blk.0.ffn_gate.weight` has type Q5_1, which baremetal does not run",
        ),
        (
            "shape",
            tiny_gguf(|_, t| t[4].1 = vec![32, 8]),
            "`blk.0.attn_k.weight` has shape [32, 8]",
        ),
        (
            "vocab",
            tiny_gguf(|kv, _| {
                let mut arr = 8u32.to_le_bytes().to_vec();
                arr.extend_from_slice(&5u64.to_le_bytes());
                for s in ["a", "b", "c", "d", "e"] {
                    arr.extend(string(s));
                }
                kv.push(("tokenizer.ggml.tokens".into(), 9, arr));
            }),
            "5 tokens",
        ),
        (
            "missing-tensor",
            tiny_gguf(|_, t| t.retain(|t| t.0 != "blk.0.ffn_up.weight")),
            "`blk.0.ffn_up.weight` is missing",
        ),
        (
            "head-dim",
            tiny_gguf(|kv, _| {
                kv.push((
                    "llama.rope.dimension_count".into(),
                    4,
                    2u32.to_le_bytes().to_vec(),
                ))
            }),
            "rope.dimension_count is 2",
        ),
    ];
    for (name, bytes, needle) in cases {
        let e = open_err(&dir, &format!("{name}.gguf"), &bytes);
        assert!(e.contains(needle), "{name}: {e}");
        assert!(
            e.contains(&format!("{name}.gguf")),
            "{name}: the error names the file: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{name}: one line: {e}");
    }
    std::fs::remove_dir_all(dir).ok();
}

// ---------------------------------------------------------------------------------------
// The subcommands on GGUF files.
// ---------------------------------------------------------------------------------------

fn baremetal(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_baremetal"))
        .args(args)
        .output()
        .unwrap()
}

/// `logits --json` prints llama.cpp's teacher-forced figures (within tolerance) for a GGUF.
#[test]
fn logits_command_matches_llama_cpp() {
    let (Some(path), Some(reference)) = (
        fixture("gguf/models/synth-llama3-q8_0.gguf"),
        fixture("gguf/reference/synth-llama3-q8_0.forced48.json"),
    ) else {
        return;
    };
    let want: Forced = read_json(&reference);
    let ids: Vec<String> = want.input[..12].iter().map(|i| i.to_string()).collect();
    let o = baremetal(&[
        "logits",
        "--model",
        path.to_str().unwrap(),
        "--ids",
        &ids.join(" "),
        "--top",
        "5",
        "--json",
        "--generic",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let positions = j["positions"].as_array().unwrap();
    assert_eq!(positions.len(), 12);
    let tol = tolerance("q8_0") * scale(&want.top5);
    for (pos, p) in positions.iter().enumerate() {
        assert_eq!(p["input"].as_u64().unwrap() as u32, want.input[pos]);
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        // Our top-5 ids, with logits; every llama.cpp top-5 id that is in ours is close.
        let ours: Vec<(u32, f32)> = top
            .iter()
            .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32))
            .collect();
        assert!(ours.windows(2).all(|w| w[0].1 >= w[1].1), "sorted");
        for &(id, l) in &want.top5[pos] {
            if let Some(&(_, got)) = ours.iter().find(|o| o.0 == id) {
                assert!(
                    (got - l).abs() <= tol,
                    "position {pos} id {id}: {got} vs {l}"
                );
            }
        }
        if want.top5[pos][0].1 - want.top5[pos][1].1 > 2.0 * tol {
            assert_eq!(p["argmax"].as_u64().unwrap() as u32, want.argmax[pos]);
        }
    }
}

/// `template --model` renders the GGUF's own chat template (Phi-3.5's, in the synthesised
/// files) exactly as jinja2 rendered it.
#[test]
fn template_command_reads_the_models_chat_template() {
    let (Some(model), Some(cases)) = (
        fixture("gguf/models/synth-llama3-f16.gguf"),
        fixture("gguf/reference/chat_templates.json"),
    ) else {
        return;
    };
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(cases).unwrap()).unwrap();
    let dir = temp_dir("gguf-template");
    let mut checked = 0;
    for c in cases
        .iter()
        .filter(|c| c["template"] == "microsoft-Phi-3.5-mini-instruct.jinja")
    {
        let Some(rendered) = c["rendered"].as_str() else {
            continue;
        };
        let ctx = dir.join("ctx.json");
        std::fs::write(&ctx, c["context"].to_string()).unwrap();
        let o = baremetal(&[
            "template",
            "--model",
            model.to_str().unwrap(),
            "--context",
            ctx.to_str().unwrap(),
            "--now",
            "2024-07-26",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8(o.stdout).unwrap(),
            rendered,
            "{}",
            c["case"]
        );
        checked += 1;
    }
    assert!(checked >= 3, "phi-3.5 cases in the fixture");
    std::fs::remove_dir_all(dir).ok();
}

/// `synth --format gguf` writes the v1 file's weights: as F32 the GGUF gives bit for bit the
/// v1 file's logits; as Q8_0 / Q4_0 (llama.cpp's block rules) the quantisation moves them by
/// at most 3 % / 10 % of the largest logit (random weights are the worst case for 4 bits; the
/// exactness of the Q4_0 decoding itself is checked against llama.cpp above). With
/// `--vocab-from`, the tokenizer keys travel along.
#[test]
fn synth_writes_gguf_with_the_weights_of_v1() {
    let dir = temp_dir("gguf-synth");
    let vocab = fixture("gguf/vocab/ggml-vocab-llama-spm.gguf");
    let v1 = dir.join("s15.bin");
    let run = |args: &[&str]| {
        let o = baremetal(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "synth",
        "--config",
        "stories15m",
        "--out",
        v1.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    let reference = Model::open(&v1, Realign::Never).unwrap();
    let tokens = [1u32, 450, 2011, 29892, 6, 17];
    let logits = |m: &Model| -> Vec<Vec<f32>> {
        let mut s = Session::new(m, Backend::generic(None).unwrap());
        tokens
            .iter()
            .map(|&t| s.step(t).unwrap().to_vec())
            .collect()
    };
    let want = logits(&reference);
    for (ty, tol) in [("f32", 0.0), ("q8_0", 0.03), ("q4_0", 0.10)] {
        let out = dir.join(format!("s15-{ty}.gguf"));
        let mut args = vec![
            "synth",
            "--config",
            "stories15m",
            "--out",
            out.to_str().unwrap(),
            "--seed",
            "3",
            "--format",
            "gguf",
            "--gguf-type",
            ty,
        ];
        if let Some(v) = &vocab {
            args.extend(["--vocab-from", v.to_str().unwrap()]);
        }
        run(&args);
        let m = Model::open(&out, Realign::IfMisaligned).unwrap();
        assert!(m.config().same_shape(reference.config()), "{ty}");
        for (pos, (g, w)) in logits(&m).iter().zip(&want).enumerate() {
            let s = w.iter().fold(0f32, |a, v| a.max(v.abs()));
            let worst = g.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            if ty == "f32" {
                assert!(
                    g.iter().zip(w).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "f32 position {pos}"
                );
            } else {
                assert!(worst <= tol * s, "{ty} position {pos}: off {worst} of {s}");
            }
        }
        if vocab.is_some() {
            let g_bytes = std::fs::read(&out).unwrap();
            let g = engine::format::gguf::Gguf::parse(&g_bytes).unwrap();
            assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
            assert_eq!(
                g.get_array("tokenizer.ggml.tokens").unwrap().unwrap().len(),
                32000
            );
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The generated RMSNorm bakes the compiled epsilon in: a model of the compiled shape with
/// another epsilon (GGUFs say 1e-5 or 1e-6) must be refused, not run with the wrong one.
#[test]
fn specialised_kernels_refuse_another_rms_epsilon() {
    let mut cfg = compiled_config();
    assert!(Backend::specialised(&cfg, Path::new("m.gguf"), None).is_ok());
    cfg.norm_eps *= 10.0;
    let Err(err) = Backend::specialised(&cfg, Path::new("m.gguf"), None) else {
        panic!("a model with another epsilon was accepted");
    };
    let err = err.to_string();
    assert!(
        err.contains("rms_norm_eps") && err.contains("--generic"),
        "{err}"
    );
}
