//! A decode step performs zero heap allocations, on every backend, for f32, Q8_0 and Q4_0
//! weights, with an f32 or an f16 KV cache.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use engine::decode::sampler::{Sampler, SamplerConfig};
use engine::format::quant::{choose_group, QuantFormat};
use engine::format::writer::{write_q4_checkpoint, write_q8_checkpoint};
use engine::kernels::q4::Q4Kernels;
use engine::kernels::q8::{Q8Isa, Q8Kernels};
use engine::kernels::Isa;
use engine::runtime::session::SessionOptions;
use engine::runtime::state::KvCacheType;
use engine::{Backend, Model, Realign, Session};
use model_config::{preset, CheckpointFormat};

/// Counts allocations made by the current thread while counting is switched on, so tests
/// running in parallel on other threads do not disturb the count.
struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if ON.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ON.with(|o| o.set(true));
    f();
    ON.with(|o| o.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn counter_sees_allocations() {
    // Guards the test below against a counter that can never count.
    let n = allocations_during(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert_eq!(n, 1);
}

#[test]
fn decode_steps_do_not_allocate() {
    let dir = common::temp_dir("noalloc");
    let path = dir.join("model.bin");
    let compiled = engine::runtime::backend::compiled_config();
    // A model of the compiled shape exercises the specialised kernels; a small odd one the generic.
    engine::format::synth::write_checkpoint(&compiled, CheckpointFormat::V1, 7, &path).unwrap();
    let odd_path = dir.join("odd.bin");
    let mut odd = preset("stories260k").unwrap();
    (
        odd.dim,
        odd.n_heads,
        odd.n_kv_heads,
        odd.hidden_dim,
        odd.vocab_size,
        odd.seq_len,
    ) = (40, 5, 1, 100, 97, 32);
    odd.validate().unwrap();
    engine::format::synth::write_checkpoint(&odd, CheckpointFormat::V0, 8, &odd_path).unwrap();

    let model = Model::open(&path, Realign::Never).unwrap();
    let odd_model = Model::open(&odd_path, Realign::Never).unwrap();
    // Q8_0 versions: the compiled shape with quantize's group, the odd shape with group 20
    // (the per-group loops of the int8 kernels) and group 4 (the packed loops).
    let q8_path = dir.join("q8.bin");
    write_q8_checkpoint(
        &model,
        choose_group(&compiled, QuantFormat::Q8_0, 64).unwrap().0,
        &q8_path,
    )
    .unwrap();
    let q8_model = Model::open(&q8_path, Realign::Never).unwrap();
    let mut odd_q8 = Vec::new();
    for group in [20, 4] {
        let p = dir.join(format!("odd_q8_{group}.bin"));
        write_q8_checkpoint(&odd_model, group, &p).unwrap();
        odd_q8.push(Model::open(&p, Realign::Never).unwrap());
    }
    // Q4_0 versions: the compiled shape with quantize's group, the odd shape with group 20
    // (the per-group loops) and group 4 (the packed loops).
    let q4_path = dir.join("q4.bin");
    write_q4_checkpoint(
        &model,
        choose_group(&compiled, QuantFormat::Q4_0, 32).unwrap().0,
        &q4_path,
    )
    .unwrap();
    let q4_model = Model::open(&q4_path, Realign::Never).unwrap();
    let mut odd_q4 = Vec::new();
    for group in [20, 4] {
        let p = dir.join(format!("odd_q4_{group}.bin"));
        write_q4_checkpoint(&odd_model, group, &p).unwrap();
        odd_q4.push(Model::open(&p, Realign::Never).unwrap());
    }
    // Backends are not Clone (they may own a thread pool): build the list once per cache type.
    let make_runs = || {
        let mut runs: Vec<(&Model, Backend)> = Vec::new();
        for &isa in Isa::all() {
            if let Some(b) = Backend::specialised(model.config(), &path, Some(isa)).unwrap() {
                runs.push((&model, b));
            }
            if let Some(b) = Backend::specialised(q8_model.config(), &q8_path, Some(isa)).unwrap() {
                runs.push((&q8_model, b));
            }
            if let Some(b) = Backend::specialised(q4_model.config(), &q4_path, Some(isa)).unwrap() {
                runs.push((&q4_model, b));
            }
            if let Some(b) = Backend::generic(Some(isa)) {
                runs.push((&odd_model, b));
            }
        }
        for k in Q8Isa::all().iter().filter_map(|&i| Q8Kernels::for_isa(i)) {
            for m in &odd_q8 {
                runs.push((m, Backend::generic(None).unwrap().with_q8(k)));
            }
        }
        for k in Q8Isa::all().iter().filter_map(|&i| Q4Kernels::for_isa(i)) {
            for m in &odd_q4 {
                runs.push((m, Backend::generic(None).unwrap().with_q4(k)));
            }
        }
        runs
    };
    let runs: Vec<_> = [KvCacheType::F32, KvCacheType::F16]
        .into_iter()
        .flat_map(|kv| make_runs().into_iter().map(move |r| (r, kv)))
        .collect();
    assert!(runs.len() >= 8);
    for ((m, backend), kv) in runs {
        let what = format!("{}, {kv} KV cache", backend.describe());
        let vocab = m.config().vocab_size;
        // Batches of 5: a 7-token prompt is a chunk of 5 and one of 2.
        let options = SessionOptions {
            kv_cache: kv,
            batch: 5,
            ..SessionOptions::default()
        };
        let mut session = Session::with_options(m, backend, options);
        let prompt: Vec<u32> = (0..7).map(|i| (1 + 3 * i) % vocab as u32).collect();
        let n = allocations_during(|| {
            session.prefill(&prompt).unwrap();
        });
        assert_eq!(n, 0, "{what}: {n} allocations in a batched prompt");
        let mut sampler = Sampler::new(
            vocab,
            SamplerConfig {
                temperature: 0.8,
                top_p: 0.9,
                top_k: 0,
                seed: 3,
            },
        );
        let mut token = 1u32;
        let steps = (m.config().seq_len - prompt.len()).min(24);
        let n = allocations_during(|| {
            for _ in 0..steps {
                let logits = session.step(token).unwrap();
                token = sampler.sample(logits);
            }
        });
        assert_eq!(n, 0, "{what}: {n} allocations in {steps} decode steps");
    }
    std::fs::remove_dir_all(dir).ok();
}
