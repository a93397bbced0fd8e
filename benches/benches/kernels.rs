//! Specialised (generated for the compiled MODEL_CONFIG) against generic (runtime-shape)
//! kernels: every GEMV shape of the model (f32, and Q8_0 / Q4_0 where tiled), RMSNorm, and one
//! whole decode step.
//! Same inputs, same thread count (one), same ISA (the best this CPU has).
//!
//! `cargo bench -p benches` uses the default config; `MODEL_CONFIG=stories110m cargo bench -p benches`
//! measures another shape.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::base::rng::Rng;
use engine::runtime::backend::compiled_config;
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

/// The Q8_0 and Q4_0 GEMVs of every shape the generator tiled: the generated kernel on the
/// tiled copy against the runtime-shape kernel on the file's layout, same weights and input.
fn int8_gemv(c: &mut Criterion) {
    use engine::format::quant::{quantize_activations, Q4Ref, Q8Ref};
    use engine::kernels::q4::Q4Kernels;
    use engine::kernels::q8::Q8Kernels;
    use model_config::tiled;

    let Some(int8) = engine::runtime::backend::generated_int8_kernels() else {
        return;
    };
    let (q8, q4) = (Q8Kernels::detect(), Q4Kernels::detect());
    let mut rng = Rng::new(2);
    let mut group = c.benchmark_group("int8_gemv");
    let shapes = generated::Q8_SHAPES.iter().map(|&s| (false, s));
    for (is_q4, (rows, cols)) in shapes.chain(generated::Q4_SHAPES.iter().map(|&s| (true, s))) {
        let g = if is_q4 {
            generated::Q4_GROUP
        } else {
            generated::Q8_GROUP
        };
        let x = rng.vec(cols);
        let (mut xq, mut xs) = (vec![0i8; cols], vec![0f32; cols / g]);
        quantize_activations(&x, g, &mut xq, &mut xs);
        let mut tx = vec![0i8; cols];
        tiled::tile_input(&xq, g, &mut tx);
        let offset = if is_q4 {
            tiled::Q4_OFFSET
        } else {
            tiled::Q8_OFFSET
        };
        let mut corr = vec![0i32; cols / 4];
        tiled::input_correction(&tx, offset, &mut corr);
        let ws: Vec<f32> = (0..rows * cols / g)
            .map(|i| 0.01 + (i % 7) as f32 * 1e-3)
            .collect();
        let mut tws = vec![0f32; ws.len()];
        let mut out = vec![0.0; rows];
        let name = if is_q4 { "q4_0" } else { "q8_0" };
        let id = |kind: &str| BenchmarkId::new(format!("{name} {rows}x{cols}"), kind);
        let x_ref = Q8Ref {
            q: &xq,
            scales: &xs,
            group: g,
        };
        if is_q4 {
            let w: Vec<u8> = (0..rows * cols / 2).map(|i| (i * 37 % 256) as u8).collect();
            let mut tw = vec![0u8; w.len()];
            tiled::tile_q4(&w, &ws, cols, g, &mut tw, &mut tws);
            group.throughput(Throughput::Bytes((w.len() + ws.len() * 4) as u64));
            let k = int8.q4(rows, cols, g).expect("a listed shape");
            group.bench_function(id("specialised"), |b| {
                b.iter(|| k.run(&tw, &tws, &tx, &xs, &corr, black_box(&mut out)))
            });
            let w_ref = Q4Ref {
                q: &w,
                scales: &ws,
                group: g,
            };
            group.bench_function(id("generic"), |b| {
                b.iter(|| q4.matmul(black_box(&mut out), w_ref, x_ref))
            });
        } else {
            let w: Vec<i8> = (0..rows * cols)
                .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                .collect();
            let mut tw = vec![0i8; w.len()];
            tiled::tile_q8(&w, &ws, cols, g, &mut tw, &mut tws);
            group.throughput(Throughput::Bytes((w.len() + ws.len() * 4) as u64));
            let k = int8.q8(rows, cols, g).expect("a listed shape");
            group.bench_function(id("specialised"), |b| {
                b.iter(|| k.run(&tw, &tws, &tx, &xs, &corr, black_box(&mut out)))
            });
            let w_ref = Q8Ref {
                q: &w,
                scales: &ws,
                group: g,
            };
            group.bench_function(id("generic"), |b| {
                b.iter(|| q8.matmul(black_box(&mut out), w_ref, x_ref))
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
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 0, &path)
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

criterion_group!(benches, gemv, int8_gemv, rmsnorm, decode_step);
criterion_main!(benches);
