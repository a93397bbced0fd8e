//! Q4_0 (baremetal v3) end to end: the file `quantize --format q4_0` writes against an
//! independent writer, the loader's refusals, and the engine's greedy ids against a plain
//! scalar Q4_0 forward pass written here independently (runq.c's loop on unpacked 4-bit
//! weights), on every Q4 path, plus thread-count invariance.
// The reference below keeps runq.c's indexed C loops, so it reads side by side with it.
#![allow(clippy::needless_range_loop)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::quantised::*;
use common::runq::*;
use common::*;
use engine::decode::sampler::argmax;
use engine::format::quant::{choose_group, QuantFormat};
use engine::format::writer::write_q4_checkpoint;
use engine::kernels::q4::Q4Kernels;
use engine::{Backend, Model, Realign, Session};
use model_config::{preset, CheckpointFormat, WeightFormat};

// ---------------------------------------------------------------------------------------
// An independent Q4_0 implementation: v3 writing and parsing, the quantiser, runq.c's
// forward. It shares nothing with the engine but the f32 reading of the source checkpoint.
// ---------------------------------------------------------------------------------------

/// The Q4_0 rule of docs/FORMATS.md: per group `scale = max|w| / 7`,
/// `q = round_ties_even(w / scale)` clamped to [-8, 7]; scale 0 → q 0.
fn q4_quantize(w: &[f32], gs: usize) -> QT {
    let mut q = Vec::with_capacity(w.len());
    let mut s = Vec::with_capacity(w.len() / gs);
    for g in w.chunks(gs) {
        let wmax = g.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        let scale = wmax / 7.0;
        s.push(scale);
        for &v in g {
            q.push(if scale == 0.0 {
                0
            } else {
                (v / scale).round_ties_even().clamp(-8.0, 7.0) as i8
            });
        }
    }
    QT { q, s }
}

/// Writes a v3 file as docs/FORMATS.md describes it.
fn export_v3(src: &Model, gs: usize, path: &Path) {
    let c = src.config();
    let mut out = Vec::new();
    out.extend_from_slice(&0x616b3432u32.to_le_bytes());
    out.extend_from_slice(&3i32.to_le_bytes());
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
        let qt = q4_quantize(t, gs);
        for pair in qt.q.chunks(2) {
            out.push((pair[0] + 8) as u8 | (((pair[1] + 8) as u8) << 4));
        }
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

/// `quantize --format q4_0`'s writer produces byte for byte what the independent writer
/// above does (header, order, nibble packing, scales), for a separate classifier and for the
/// real stories260K when the fixture is present; the quantisation error is within scale / 2.
#[test]
fn q4_writer_matches_the_independent_writer() {
    let dir = temp_dir("q4-export");
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
            choose_group(model.config(), QuantFormat::Q4_0, 32)
                .unwrap()
                .0,
            group
        );
        let ours = dir.join("ours.bin");
        let theirs = dir.join("theirs.bin");
        let report = write_q4_checkpoint(&model, group, &ours).unwrap();
        export_v3(&model, group, &theirs);
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "{} differs",
            src.display()
        );
        assert!(
            report.max_error.iter().all(|&(_, e)| e > 0.0),
            "{:?}",
            report.max_error
        );
        // |w - q·scale| <= scale / 2 for every weight, checked on the parsed file.
        let m = parse(&std::fs::read(&ours).unwrap(), Quant::Q4);
        let w = model.f32_tensor("wq", Some(1)).unwrap();
        for (i, &x) in w.iter().enumerate() {
            let s = m.wq[1].s[i / group];
            let err = (x - m.wq[1].q[i] as f32 * s).abs();
            assert!(err <= s / 2.0 * (1.0 + 1e-5), "wq[1][{i}]: {err} > {s} / 2");
        }
        let q = Model::open(&ours, Realign::Never).unwrap();
        assert_eq!(
            q.format(),
            engine::format::FileFormat::Llama2c(CheckpointFormat::V3)
        );
        assert_eq!(
            q.config().weight_format,
            WeightFormat::Q4_0 { group_size: group }
        );
        assert!(q.config().same_shape(model.config()));
        assert!(write_q4_checkpoint(&q, group, &dir.join("again.bin"))
            .unwrap_err()
            .to_string()
            .contains("already"));
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn greedy_ids_equal_independent_scalar_q4_on_stories260k() {
    let Some(src) = stories260k() else { return };
    let dir = temp_dir("q4-260k");
    let path = dir.join("s260k_q4.bin");
    assert_eq!(
        quantize_to(&src, &path, Quant::Q4),
        4,
        "hidden 172 = 4 · 43 leaves group 4"
    );
    check_against_independent(&path, 256, Quant::Q4);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn greedy_ids_equal_independent_scalar_q4_on_synth_stories15m() {
    let dir = temp_dir("q4-15m");
    let path = dir.join("s15m_q4.bin");
    assert_eq!(quantize_to(&synth_15m(&dir), &path, Quant::Q4), 32);
    check_against_independent(&path, 256, Quant::Q4);
    std::fs::remove_dir_all(dir).ok();
}

/// Rows are split across threads in tiles of 4 for the Q4 kernels too: the logits are
/// bit-identical for 1, 2 and 3 threads, on every Q4 path, for a packed group (4) and one
/// that takes the per-group loops (20).
#[test]
fn q4_logits_are_identical_for_every_thread_count() {
    let dir = temp_dir("q4-threads");
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
        let path = dir.join(format!("q4_{group}.bin"));
        write_q4_checkpoint(&f32_model, group, &path).unwrap();
        let model = Model::open(&path, Realign::Never).unwrap();
        for k in supported_isas()
            .into_iter()
            .map(|i| Q4Kernels::for_isa(i).unwrap())
        {
            let mut sessions: Vec<Session> = (1..=3)
                .map(|t| {
                    Session::new(
                        &model,
                        Backend::generic(None).unwrap().with_q4(k).with_threads(t),
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

/// Truncated files, odd or straddling groups and re-quantising are refused with one clear
/// error naming the problem, by the loader and by the CLI (no panic).
#[test]
fn malformed_q4_files_and_bad_arguments_are_refused() {
    let dir = temp_dir("q4-bad");
    let mut cfg = preset("stories260k").unwrap();
    (cfg.vocab_size, cfg.seq_len) = (97, 16);
    let src = dir.join("f32.bin");
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 7, &src).unwrap();
    let good = dir.join("q4.bin");
    let o = baremetal(&[
        "quantize",
        src.to_str().unwrap(),
        good.to_str().unwrap(),
        "--format",
        "q4_0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("using 4") && e.contains("baremetal v3 (Q4_0)"),
        "{e}"
    );
    let bytes = std::fs::read(&good).unwrap();
    let run = |path: &Path| {
        baremetal(&[
            "generate",
            "--ids",
            "--generic",
            "--steps",
            "4",
            "--model",
            path.to_str().unwrap(),
        ])
    };
    assert!(run(&good).status.success(), "{}", stderr(&run(&good)));

    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "truncated",
            bytes[..bytes.len() - 3].to_vec(),
            vec!["truncated", "q4_0 (group 4)"],
        ),
        (
            "long",
            [&bytes[..], &[0u8; 4]].concat(),
            vec!["longer than expected"],
        ),
        ("odd-group", with_group(&bytes, 3), vec!["odd"]),
        (
            "straddle",
            with_group(&bytes, 64),
            vec!["`w2` rows have 172 columns", "Q4_0 group size 64"],
        ),
        ("zero-group", with_group(&bytes, 0), vec!["group_size"]),
    ];
    for (name, data, needles) in cases {
        let path = dir.join(format!("{name}.bin"));
        std::fs::write(&path, data).unwrap();
        let err = Model::open(&path, Realign::Never)
            .err()
            .expect("refused")
            .to_string();
        assert!(needles.iter().all(|n| err.contains(n)), "{name}: {err}");
        let o = run(&path);
        let e = stderr(&o);
        assert!(
            !o.status.success() && !e.contains("panicked") && needles.iter().all(|n| e.contains(n)),
            "{name}: {e}"
        );
    }
    for (group, needle) in [("3", "even"), ("0", "even")] {
        let o = baremetal(&[
            "quantize",
            src.to_str().unwrap(),
            dir.join("x.bin").to_str().unwrap(),
            "--format",
            "q4_0",
            "--group",
            group,
        ]);
        let e = stderr(&o);
        assert!(
            !o.status.success() && e.contains(needle) && !e.contains("panicked"),
            "{e}"
        );
    }
    let o = baremetal(&[
        "quantize",
        good.to_str().unwrap(),
        dir.join("x.bin").to_str().unwrap(),
        "--format",
        "q4_0",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("already"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The header of `bytes` with its group size field replaced.
fn with_group(bytes: &[u8], group: i32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[37..41].copy_from_slice(&group.to_le_bytes());
    b
}

/// `bench` and `inspect` count Q4_0 bytes: half a byte per weight plus a scale per group.
#[test]
fn bench_and_inspect_count_q4_bytes() {
    let dir = temp_dir("q4-bench");
    let path = dir.join("s15m_q4.bin");
    quantize_to(&synth_15m(&dir), &path, Quant::Q4);
    let cfg = Model::open(&path, Realign::Never).unwrap().config().clone();
    let (d, h, l, v) = (288usize, 768usize, 6usize, 32000usize);
    let matrices = l * (4 * d * d + 3 * h * d) + v * d + d;
    let want = matrices / 2 + matrices / 32 * 4 + (2 * l + 1) * d * 4;
    assert_eq!(cfg.weight_bytes_per_token(), want);
    let o = baremetal(&["inspect", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        text.contains("Q4_0") && text.contains(&format!("per token: {want}")),
        "{text}"
    );
    let o = baremetal(&[
        "bench",
        "--model",
        path.to_str().unwrap(),
        "--generic",
        "--tokens",
        "4",
        "--warmup",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["weight_bytes_per_token"], want);
    assert_eq!(j["weight_format"], "q4_0 (group 32)");
    std::fs::remove_dir_all(dir).ok();
}
