//! Q8_0 (llama2.c v2) end to end: quantisation error bounds, the file `quantize` writes, the
//! loader's refusals, and the engine's greedy ids against a plain scalar Q8_0 forward pass
//! written here independently (after llama2.c's `runq.c`), on every int8 path.
// The reference below keeps runq.c's indexed C loops, so it reads side by side with it.
#![allow(clippy::needless_range_loop)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::quantised::*;
use common::runq::*;
use common::*;
use engine::base::rng::Rng;
use engine::decode::sampler::argmax;
use engine::format::quant::{choose_group, quantize_activations, quantize_weights, QuantFormat};
use engine::format::writer::write_q8_checkpoint;
use engine::kernels::q8::Q8Kernels;
use engine::{Backend, Model, Realign, Session};
use model_config::{preset, CheckpointFormat, ModelConfig, WeightFormat};

// ---------------------------------------------------------------------------------------
// An independent Q8_0 implementation: v2 parsing, export.py's quantiser, runq.c's forward.
// It shares nothing with the engine but the f32 reading of the source checkpoint.
// ---------------------------------------------------------------------------------------

/// export.py `quantize_q80`: per group `scale = max|w| / 127`, `q = torch.round(w / scale)`
/// (ties to even); an all-zero group gets scale 0 (export.py would produce NaN there).
fn export_quantize(w: &[f32], gs: usize) -> QT {
    quantize_groups(w, gs, f32::round_ties_even)
}

/// Writes a v2 file as export.py's `version2_export` does (which checks only that the group
/// divides dim, so it happily writes groups that straddle w2 rows).
fn export_v2(src: &Model, gs: usize, path: &Path) {
    let c = src.config();
    let mut out = Vec::new();
    out.extend_from_slice(&0x616b3432u32.to_le_bytes());
    out.extend_from_slice(&2i32.to_le_bytes());
    for v in [
        c.dim,
        c.hidden_dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.vocab_size,
        c.seq_len,
    ] {
        out.extend_from_slice(&(v as i32).to_le_bytes());
    }
    out.push(c.shared_classifier as u8);
    out.extend_from_slice(&(gs as i32).to_le_bytes());
    out.resize(256, 0);
    let f32s = |out: &mut Vec<u8>, v: &[f32]| {
        v.iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
    };
    for name in ["rms_att", "rms_ffn", "rms_final"] {
        f32s(&mut out, src.f32_tensor(name, None).unwrap());
    }
    let mut tensors: Vec<&[f32]> = vec![src.f32_tensor("token_embedding", None).unwrap()];
    for name in ["wq", "wk", "wv", "wo", "w1", "w2", "w3"] {
        tensors.extend((0..c.n_layers).map(|l| src.f32_tensor(name, Some(l)).unwrap()));
    }
    if !c.shared_classifier {
        tensors.push(src.f32_tensor("wcls", None).unwrap());
    }
    for t in tensors {
        let qt = export_quantize(t, gs);
        out.extend(qt.q.iter().map(|&v| v as u8));
        f32s(&mut out, &qt.s);
    }
    std::fs::write(path, out).unwrap();
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn baremetal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baremetal"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Per value, `|x - q·scale| <= scale / 2` (rounding to nearest), the group's largest value
/// comes back to within one f32 rounding, all-zero groups stay zero, and no value is -128.
#[test]
fn quantise_dequantise_round_trip_error_bounds() {
    let mut rng = Rng::new(0x0808);
    for group in [1, 3, 4, 7, 16, 32, 64, 96] {
        for n_groups in [1, 2, 5, 33] {
            let n = group * n_groups;
            let mut x = rng.vec(n);
            for (i, g) in x.chunks_mut(group).enumerate() {
                let m = [1e-6, 1e-3, 1.0, 7.5, 1e3, 0.0][(i + group) % 6];
                g.iter_mut().for_each(|v| *v *= m);
            }
            for weights in [true, false] {
                let (mut q, mut s) = (vec![0i8; n], vec![0f32; n_groups]);
                if weights {
                    quantize_weights(&x, group, &mut q, &mut s);
                } else {
                    quantize_activations(&x, group, &mut q, &mut s);
                }
                for (g, ((xg, qg), &scale)) in
                    x.chunks(group).zip(q.chunks(group)).zip(&s).enumerate()
                {
                    let wmax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    assert!(
                        (scale as f64 - wmax as f64 / 127.0).abs() <= 1e-6 * wmax as f64,
                        "group {g}: scale {scale}"
                    );
                    for (&xv, &qv) in xg.iter().zip(qg) {
                        assert_ne!(qv, -128);
                        let deq = qv as f64 * scale as f64;
                        let err = (xv as f64 - deq).abs();
                        // Half a step, plus the f32 rounding of x / scale.
                        assert!(
                            err <= scale as f64 * (0.5 + 1e-5),
                            "group {group}: {xv} → {qv} × {scale} (error {err})"
                        );
                        if wmax == 0.0 {
                            assert_eq!((qv, scale), (0, 0.0));
                        }
                        if xv.abs() == wmax && wmax > 0.0 {
                            assert_eq!(qv.unsigned_abs(), 127, "the largest value maps to ±127");
                            assert!((deq - xv as f64).abs() <= 1e-6 * wmax as f64);
                        }
                    }
                }
            }
        }
    }
}

/// `quantize` writes the bytes export.py's `version2_export` writes for the same weights.
#[test]
fn quantize_writes_what_llama2c_export_writes() {
    let dir = temp_dir("q8-export");
    let mut cfg = preset("stories260k").unwrap();
    (
        cfg.dim,
        cfg.hidden_dim,
        cfg.vocab_size,
        cfg.seq_len,
        cfg.shared_classifier,
    ) = (96, 160, 101, 16, false);
    cfg.validate().unwrap();
    let mut sources = vec![(dir.join("small.bin"), 32)];
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V0, 3, &sources[0].0).unwrap();
    if let Some(real) = stories260k() {
        sources.push((real, 4));
    }
    for (src, group) in sources {
        let model = Model::open(&src, Realign::Never).unwrap();
        assert_eq!(
            choose_group(model.config(), QuantFormat::Q8_0, 64)
                .unwrap()
                .0,
            group
        );
        let ours = dir.join("ours.bin");
        let theirs = dir.join("theirs.bin");
        let report = write_q8_checkpoint(&model, group, &ours).unwrap();
        export_v2(&model, group, &theirs);
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "{} differs",
            src.display()
        );
        assert!(
            report.max_error.iter().all(|&(_, e)| e > 0.0 && e < 0.05),
            "{:?}",
            report.max_error
        );
        let q = Model::open(&ours, Realign::Never).unwrap();
        assert_eq!(
            q.format(),
            engine::format::FileFormat::Llama2c(CheckpointFormat::V2)
        );
        assert_eq!(
            q.config().weight_format,
            WeightFormat::Q8_0 { group_size: group }
        );
        assert!(q.config().same_shape(model.config()));
        // Already quantised: refused.
        assert!(write_q8_checkpoint(&q, group, &dir.join("again.bin"))
            .unwrap_err()
            .to_string()
            .contains("already"));
    }
    std::fs::remove_dir_all(dir).ok();
}

/// llama2.c's exporter checks only dim, so it writes stories260K with group 64 although w2
/// rows (hidden 172) are not a multiple of 64, and runq.c then skips the tail of every w2
/// row. The loader refuses such a file, naming the tensor.
#[test]
fn group_straddling_w2_rows_is_refused() {
    let Some(src) = stories260k() else { return };
    let dir = temp_dir("q8-straddle");
    let path = dir.join("s260k_g64.bin");
    export_v2(&Model::open(&src, Realign::Never).unwrap(), 64, &path);
    let err = Model::open(&path, Realign::Never)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("`w2` rows have 172 columns, not a multiple of the Q8_0 group size 64"),
        "{err}"
    );
    let o = baremetal(&[
        "generate",
        "--ids",
        "--generic",
        "--model",
        path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("s260k_g64.bin")
            && e.contains("`w2` rows have 172 columns")
            && !e.contains("panicked"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn greedy_ids_equal_independent_scalar_q8_on_stories260k() {
    let Some(src) = stories260k() else { return };
    let dir = temp_dir("q8-260k");
    let path = dir.join("s260k_q8.bin");
    assert_eq!(
        quantize_to(&src, &path, Quant::Q8),
        4,
        "hidden 172 = 4 · 43 leaves group 4"
    );
    check_against_independent(&path, 256, Quant::Q8);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn greedy_ids_equal_independent_scalar_q8_on_synth_stories15m() {
    let dir = temp_dir("q8-15m");
    let path = dir.join("s15m_q8.bin");
    assert_eq!(
        quantize_to(&synth_15m(&dir), &path, Quant::Q8),
        32,
        "dim 288 leaves group 32"
    );
    check_against_independent(&path, 256, Quant::Q8);
    std::fs::remove_dir_all(dir).ok();
}

/// Rows are split across threads in tiles of 4 for the int8 kernels too: the logits are
/// bit-identical for every thread count, on every int8 path, for a power-of-two group and a
/// group that takes the per-group loops (20).
#[test]
fn logits_are_identical_for_every_thread_count() {
    let dir = temp_dir("q8-threads");
    let mut cfg = preset("stories260k").unwrap();
    (
        cfg.dim,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.hidden_dim,
        cfg.vocab_size,
        cfg.seq_len,
    ) = (80, 4, 2, 140, 333, 12);
    cfg.validate().unwrap();
    let src = dir.join("f32.bin");
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 5, &src).unwrap();
    let f32_model = Model::open(&src, Realign::Never).unwrap();
    for group in [4, 20] {
        let path = dir.join(format!("q8_{group}.bin"));
        write_q8_checkpoint(&f32_model, group, &path).unwrap();
        let model = Model::open(&path, Realign::Never).unwrap();
        for k in supported_isas()
            .into_iter()
            .map(|i| Q8Kernels::for_isa(i).unwrap())
        {
            let mut sessions: Vec<Session> = (1..=3)
                .map(|t| {
                    Session::new(
                        &model,
                        Backend::generic(None).unwrap().with_q8(k).with_threads(t),
                    )
                })
                .collect();
            let mut token = 1;
            for pos in 0..cfg.seq_len {
                let first = sessions[0].step(token).unwrap().to_vec();
                for s in &mut sessions[1..] {
                    let l = s.step(token).unwrap();
                    assert!(
                        first
                            .iter()
                            .zip(l.iter())
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} group {group} pos {pos}",
                        k.isa()
                    );
                }
                token = argmax(&first);
            }
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn quantize_command_reports_its_group_choice_and_refuses_bad_input() {
    let dir = temp_dir("q8-cli");
    let s15 = synth_15m(&dir);
    let out = dir.join("q.bin");
    let (s, o) = (s15.to_str().unwrap(), out.to_str().unwrap());
    let r = baremetal(&["quantize", s, o, "--format", "q8_0"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let e = stderr(&r);
    assert!(
        e.contains("group size 64 does not divide every row") && e.contains("using 32"),
        "{e}"
    );
    let inspect = baremetal(&["inspect", o]);
    let text = String::from_utf8_lossy(&inspect.stdout).into_owned();
    assert!(
        text.contains("v2") && text.contains("one f32 scale per 32 weights"),
        "{text}"
    );
    let cfg = ModelConfig::from_toml_str(&text).unwrap();
    assert_eq!(cfg.weight_format, WeightFormat::Q8_0 { group_size: 32 });
    let bytes_line = text
        .lines()
        .find(|l| l.contains("weight bytes read per token"))
        .unwrap();
    assert!(
        bytes_line.ends_with(&cfg.weight_bytes_per_token().to_string()),
        "{bytes_line}"
    );

    // Already quantised, a group that is not a multiple of 4, an unknown format, a shape
    // no group fits: one clear line each.
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["quantize", o, "x.bin", "--format", "q8_0"],
            vec!["already", "v2"],
        ),
        (
            vec!["quantize", s, "y.bin", "--format", "q8_0", "--group", "6"],
            vec!["--group 6", "multiple of 4"],
        ),
        (
            vec!["quantize", s, "y.bin", "--format", "q2_k"],
            vec!["q2_k"],
        ),
        (
            vec!["quantize", s, s, "--format", "q8_0"],
            vec!["is the input"],
        ),
    ];
    for (args, needles) in cases {
        let r = baremetal(&args);
        let e = stderr(&r);
        assert!(
            !r.status.success() && !e.contains("panicked"),
            "{args:?}: {e}"
        );
        assert!(needles.iter().all(|n| e.contains(n)), "{args:?}: {e}");
    }
    let mut odd = preset("stories260k").unwrap();
    (
        odd.dim,
        odd.n_heads,
        odd.n_kv_heads,
        odd.hidden_dim,
        odd.vocab_size,
        odd.seq_len,
    ) = (36, 2, 2, 98, 40, 8);
    odd.validate().unwrap();
    let odd_path = dir.join("odd.bin");
    engine::format::synth::write_checkpoint(&odd, CheckpointFormat::V1, 1, &odd_path).unwrap();
    let r = baremetal(&[
        "quantize",
        odd_path.to_str().unwrap(),
        dir.join("z.bin").to_str().unwrap(),
        "--format",
        "q8_0",
    ]);
    let e = stderr(&r);
    assert!(
        !r.status.success()
            && e.contains("dim 36, hidden_dim 98")
            && e.trim_end().lines().count() == 1,
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The quality report on stories260K: the numbers are in range, and a model compared with
/// itself agrees everywhere with zero divergence.
#[test]
fn eval_reports_agreement_and_kl() {
    let Some(src) = stories260k() else { return };
    let dir = temp_dir("q8-eval");
    let q8 = dir.join("q8.bin");
    quantize_to(&src, &q8, Quant::Q8);
    let (s, q) = (src.to_str().unwrap(), q8.to_str().unwrap());
    let r = baremetal(&[
        "eval",
        "--model",
        s,
        "--quantized",
        q,
        "--generic",
        "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let agreement = j["greedy_agreement"].as_u64().unwrap();
    let kl = j["mean_kl_nats"].as_f64().unwrap();
    assert_eq!(j["positions"].as_u64(), Some(256));
    assert!(
        agreement <= 256 && j["argmax_matches"].as_u64().unwrap() >= agreement,
        "{j}"
    );
    assert!(kl.is_finite() && kl > 0.0 && kl < 0.5, "{j}");

    let r = baremetal(&[
        "eval",
        "--model",
        s,
        "--quantized",
        s,
        "--generic",
        "--steps",
        "64",
    ]);
    let text = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        text.contains("64 of 64 greedy tokens identical (first divergence: none)"),
        "{text}"
    );
    assert!(text.contains("mean 0.000e0 nats"), "{text}");

    let other = dir.join("other.bin");
    let mut cfg = preset("stories260k").unwrap();
    cfg.seq_len = 8;
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 1, &other).unwrap();
    let r = baremetal(&[
        "eval",
        "--model",
        other.to_str().unwrap(),
        "--quantized",
        q,
        "--generic",
    ]);
    assert!(
        !r.status.success() && stderr(&r).contains("not the same model shape"),
        "{}",
        stderr(&r)
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `bench` on a Q8_0 model counts int8 values and scales as the bytes each token streams.
#[test]
fn bench_counts_q8_bytes() {
    let dir = temp_dir("q8-bench");
    let mut cfg = preset("stories260k").unwrap();
    cfg.seq_len = 16;
    let src = dir.join("f32.bin");
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 2, &src).unwrap();
    let q8 = dir.join("q8.bin");
    let group = quantize_to(&src, &q8, Quant::Q8);
    let r = baremetal(&[
        "bench",
        "--model",
        q8.to_str().unwrap(),
        "--generic",
        "--threads",
        "1",
        "--tokens",
        "4",
        "--warmup",
        "1",
        "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let q8cfg = ModelConfig {
        weight_format: WeightFormat::Q8_0 { group_size: group },
        ..cfg.clone()
    };
    assert_eq!(
        j["weight_bytes_per_token"].as_u64(),
        Some(q8cfg.weight_bytes_per_token() as u64),
        "{j}"
    );
    assert!(q8cfg.weight_bytes_per_token() < cfg.weight_bytes_per_token());
    assert_eq!(j["specialised"].as_bool(), Some(false), "{j}");
    std::fs::remove_dir_all(dir).ok();
}

/// A NaN in a Q8_0 checkpoint's f32 norms reaches the logits (the activation quantiser does
/// not turn it into zeros), so `generate` reports the corruption.
#[test]
fn nan_in_a_q8_checkpoint_is_reported() {
    let dir = temp_dir("q8-nan");
    let mut cfg = preset("stories260k").unwrap();
    cfg.seq_len = 8;
    let src = dir.join("f32.bin");
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 4, &src).unwrap();
    let q8 = dir.join("q8.bin");
    quantize_to(&src, &q8, Quant::Q8);
    let mut bytes = std::fs::read(&q8).unwrap();
    let layout = model_config::CheckpointLayout::parse(&bytes[..256], bytes.len(), "x").unwrap();
    let at = layout.rms_final.offset;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let path = dir.join("nan_q8.bin");
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
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("non-finite") && !e.contains("panicked"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}
