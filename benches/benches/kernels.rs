//! Specialised (generated for the compiled MODEL_CONFIG) against generic (runtime-shape)
//! kernels: every GEMV shape of the model, RMSNorm, and one whole decode step.
//! Same inputs, same thread count (one), same ISA (the best this CPU has).
//!
//! `cargo bench -p benches` uses the default config; `MODEL_CONFIG=stories110m cargo bench -p benches`
//! measures another shape.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::backend::compiled_config;
use engine::rng::Rng;
use engine::{Backend, Matrix, Model, Realign, Session};
use model_config::CheckpointFormat;

fn backends() -> [(&'static str, Backend); 2] {
    let cfg = compiled_config();
    let spec = Backend::specialised(&cfg, std::path::Path::new("compiled"), None)
        .expect("the compiled shape matches itself")
        .expect("the best ISA is supported");
    [
        ("specialised", spec),
        ("generic", Backend::generic(None).unwrap()),
    ]
}

fn gemv(c: &mut Criterion) {
    let cfg = compiled_config();
    let (d, h, kv, v) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim(), cfg.vocab_size);
    // One matrix per distinct shape, named by the shape.
    let mut roles = vec![
        (Matrix::Q, d, d),
        (Matrix::K, kv, d),
        (Matrix::W1, h, d),
        (Matrix::W2, d, h),
        (Matrix::Classifier, v, d),
    ];
    let mut seen = Vec::new();
    roles.retain(|&(_, r, c)| {
        let new = !seen.contains(&(r, c));
        seen.push((r, c));
        new
    });
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("gemv");
    for (m, rows, cols) in roles {
        let w = rng.vec(rows * cols);
        let x = rng.vec(cols);
        let mut out = vec![0.0; rows];
        group.throughput(Throughput::Bytes((rows * cols * 4) as u64));
        for (name, b) in backends() {
            group.bench_function(BenchmarkId::new(format!("{rows}x{cols}"), name), |bench| {
                bench.iter(|| b.gemv(m, black_box(&mut out), black_box(&w), black_box(&x)))
            });
        }
    }
    group.finish();
}

fn rmsnorm(c: &mut Criterion) {
    let cfg = compiled_config();
    let mut rng = Rng::new(2);
    let (x, w) = (rng.vec(cfg.dim), rng.vec(cfg.dim));
    let mut out = vec![0.0; cfg.dim];
    let mut group = c.benchmark_group("rmsnorm");
    for (name, b) in backends() {
        group.bench_function(BenchmarkId::new(format!("{}", cfg.dim), name), |bench| {
            bench.iter(|| {
                b.rmsnorm(
                    black_box(&mut out),
                    black_box(&x),
                    black_box(&w),
                    cfg.norm_eps,
                )
            })
        });
    }
    group.finish();
}

fn decode_step(c: &mut Criterion) {
    let cfg = compiled_config();
    let path = std::env::temp_dir().join(format!(
        "baremetal-bench-{}-{}.bin",
        cfg.name,
        std::process::id()
    ));
    engine::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 0, &path)
        .expect("writing the benchmark model");
    let model = Model::open(&path, Realign::Never).expect("opening the benchmark model");
    let mut group = c.benchmark_group("decode_step");
    group.throughput(Throughput::Bytes(
        (cfg.weight_floats_per_token() * 4) as u64,
    ));
    if cfg.weight_floats_per_token() > 20_000_000 {
        group.sample_size(20);
    }
    for (name, b) in backends() {
        let mut session = Session::new(&model, b);
        // Position 0..64 cycling: attention cost stays small and bounded, weights dominate.
        let window = cfg.seq_len.min(64);
        group.bench_function(BenchmarkId::new(cfg.name.clone(), name), |bench| {
            bench.iter(|| {
                if session.pos() == window {
                    session.reset();
                }
                black_box(session.step(black_box(3)).unwrap()[0])
            })
        });
    }
    group.finish();
    drop(model);
    std::fs::remove_file(path).ok();
}

criterion_group!(benches, gemv, rmsnorm, decode_step);
criterion_main!(benches);
