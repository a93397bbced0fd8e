//! Seeded mutation fuzzing on stable Rust (no fuzzing engine) of what reads untrusted files:
//! the GGUF reader (every key/value and tensor a consumer may touch), the ggml dequantisers,
//! the GGUF tokenizer builder and tokenizers, and the GGUF model loader with one forward step.
//!
//! Every case must finish without a panic, within [`SLOW`], and without any single allocation
//! larger than a bound set by the input's size (a counting global allocator watches the case's
//! thread). Seeds are the fixture files (small vocabularies cut from llama.cpp's vocab files,
//! stories260K's GGUF models) and files built here; mutations flip and set bytes, insert,
//! delete, splice pieces of other seeds, truncate, and write interesting integers at random
//! offsets and at the offsets of header fields (counts, string lengths, dimensions, types,
//! tensor offsets).
//!
//! The tests are `#[ignore]`d so `cargo test --workspace` skips them:
//! `FUZZ_CASES=10000 cargo test --release -p engine --test fuzz -- --ignored` (`FUZZ_SEED` picks
//! another stream of cases). A failing input is written to `target/fuzz-failures/` with the
//! seed and case index to replay it.

mod common;
#[path = "common/gguf_builder.rs"]
mod gguf_builder;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine::base::rng::Rng;
use engine::fixtures::fixture;
use engine::format::ggml::dequantize;
use engine::format::gguf::{Gguf, Value, ValueType};
use engine::runtime::session::SessionOptions;
use engine::text::gguf_tokenizer::{GgufTokenizer, Kind};
use engine::{Backend, Model, Realign, Session};
use gguf_builder::{build, Layout, T, V};

// ---------------------------------------------------------------------------------------------
// Largest single allocation, per thread
// ---------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards to the system allocator; the bookkeeping touches only a const-initialised
// thread-local cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest single allocation `f` makes on this thread.
fn largest_alloc_in(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(|l| l.get())
}

/// What an input of `len` bytes may allocate in one piece: tables of a few words per byte of
/// input (tokens, merges, key/values, symbols), a tensor widened to f32 (F16: 2×, Q4_0: 7.1×),
/// a model's run state and KV cache for 8 positions.
fn alloc_bound(len: usize) -> usize {
    (64 * len).max(4 << 20)
}

/// A case slower than this is a hang.
const SLOW: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn cases() -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// What one case did: its input, the largest single allocation and the bound it had.
struct Case {
    input: Vec<u8>,
    largest: usize,
    bound: usize,
}

/// Runs `cases` cases, catching panics; fails with the first problem after saving its input.
fn run(name: &str, cases: usize, mut one: impl FnMut(&mut Rng, &mut Vec<u8>) -> (usize, usize)) {
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        *PANIC_MESSAGE.lock().unwrap() = Some(info.to_string());
    }));
    let mut rng = Rng::new(seed() ^ name.bytes().fold(0u64, |h, b| h * 31 + u64::from(b)));
    let start = Instant::now();
    let mut failure = None;
    let (mut largest_ratio, mut slowest) = (0f64, Duration::ZERO);
    for case in 0..cases {
        let mut case_rng = Rng::new(rng.next_u64());
        let mut input = Vec::new();
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| one(&mut case_rng, &mut input)));
        let took = t.elapsed();
        slowest = slowest.max(took);
        let problem = match result {
            Ok((largest, bound)) => {
                let c = Case {
                    input,
                    largest,
                    bound,
                };
                largest_ratio = largest_ratio.max(c.largest as f64 / c.input.len().max(1) as f64);
                if c.largest > c.bound {
                    Some((
                        format!(
                            "allocated {} bytes at once for a {}-byte input (bound {})",
                            c.largest,
                            c.input.len(),
                            c.bound
                        ),
                        c.input,
                    ))
                } else if took > SLOW {
                    Some((format!("took {took:?} (a hang?)"), c.input))
                } else {
                    None
                }
            }
            Err(_) => {
                let msg = PANIC_MESSAGE.lock().unwrap().take().unwrap_or_default();
                Some((format!("panic: {msg}"), input))
            }
        };
        if let Some((msg, input)) = problem {
            failure = Some((case, msg, input));
            break;
        }
    }
    std::panic::set_hook(prev_hook);
    if let Some((case, msg, input)) = failure {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}-seed{}-case{case}.bin", seed()));
        let _ = std::fs::write(&path, &input);
        panic!(
            "{name}: case {case} (FUZZ_SEED={}): {msg}; input saved to {}",
            seed(),
            path.display()
        );
    }
    eprintln!(
        "{name}: {cases} cases (FUZZ_SEED={}) in {:.1} s, no panic; largest single allocation {largest_ratio:.1}x the input; slowest case {:.1} ms",
        seed(),
        start.elapsed().as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    );
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

const INTERESTING: [u64; 31] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    9,
    12,
    13,
    16,
    31,
    32,
    33,
    63,
    64,
    127,
    128,
    255,
    256,
    0x7FFF,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    1 << 60,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// A seed file and where its header fields are.
struct Seed {
    bytes: Vec<u8>,
    /// Offsets of u32/u64 header fields: counts, key/value string lengths, n_dims, dims, type
    /// ids, tensor data offsets.
    fields: Vec<usize>,
}

impl Seed {
    fn new((bytes, l): (Vec<u8>, Layout)) -> Self {
        let mut fields = vec![8, 16];
        fields.extend(&l.kv);
        fields.extend(&l.tensor_info);
        fields.extend(&l.tensor_offset_field);
        fields.extend(&l.tensor_type_field);
        for &n in &l.tensor_ndims_field {
            fields.extend([n, n + 4, n + 12]);
        }
        Self { bytes, fields }
    }
}

fn interesting(rng: &mut Rng) -> u64 {
    let v = INTERESTING[rng.below(INTERESTING.len())];
    if rng.below(4) == 0 {
        v.wrapping_add(rng.below(3) as u64).wrapping_sub(1)
    } else {
        v
    }
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, fields: &[usize], others: &[&[u8]]) {
    // Few rounds: most bytes of a vocabulary are string lengths and texts, so each mutation is
    // likely to end parsing early; single changes reach the later stages more often.
    let rounds = 1 + rng.below(2);
    for _ in 0..rounds {
        if data.is_empty() {
            data.push(rng.below(256) as u8);
            continue;
        }
        let at = rng.below(data.len());
        match rng.below(9) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = rng.below(256) as u8,
            2 => {
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    data.insert(at, rng.below(256) as u8);
                }
            }
            3 => {
                let n = (1 + rng.below(16)).min(data.len() - at);
                data.drain(at..at + n);
            }
            4 => {
                // Splice in a piece of another seed.
                let o = others[rng.below(others.len())];
                if !o.is_empty() {
                    let s = rng.below(o.len());
                    let n = (1 + rng.below(64)).min(o.len() - s);
                    let end = (at + n).min(data.len());
                    data.splice(at..end, o[s..s + n].iter().copied());
                }
            }
            5 => {
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let bytes = interesting(rng).to_le_bytes();
                let n = width.min(data.len() - at);
                data[at..at + n].copy_from_slice(&bytes[..n]);
            }
            6 | 7 if !fields.is_empty() => {
                // A header field: a count, a length, a dimension, a type or an offset.
                let f = fields[rng.below(fields.len())];
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let bytes = interesting(rng).to_le_bytes();
                if f + width <= data.len() {
                    data[f..f + width].copy_from_slice(&bytes[..width]);
                }
            }
            _ => data.truncate(at),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// A metadata value as the builder writes it (integers keep their width class).
fn to_v(v: Value<'_>) -> V {
    match v {
        Value::Int(x, ValueType::Bool) => V::Bool(x != 0),
        Value::Int(x, ValueType::U8) => V::U8(x as u8),
        Value::Int(x, ValueType::I8 | ValueType::I16 | ValueType::I32) => V::I32(x as i32),
        Value::Int(x, ValueType::U16 | ValueType::U32) => V::U32(x as u32),
        Value::Int(x, _) => V::U64(x as u64),
        Value::Float(x, _) => V::F32(x as f32),
        Value::Str(s) => V::Str(s.to_vec()),
        Value::Array(a) => {
            let items: Vec<V> = a.iter().map(to_v).collect();
            V::Arr(items.first().map_or(8, V::type_id), items)
        }
    }
}

/// A small vocabulary cut from a real one: its first `n` tokens (plus `extra` control tokens)
/// and the merges among them, with other keys as given.
fn small_vocab(path: &str, n: usize, extra: &[&str], keys: &[(&str, V)]) -> Option<Seed> {
    let bytes = std::fs::read(fixture(path)?).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let tokens = g.get_array("tokenizer.ggml.tokens").unwrap()?;
    let mut all: Vec<Vec<u8>> = tokens.strings()?.take(n).map(<[u8]>::to_vec).collect();
    all.extend(extra.iter().map(|e| e.as_bytes().to_vec()));
    let set: std::collections::HashSet<&[u8]> = all.iter().map(Vec::as_slice).collect();
    let mut kvs: Vec<(String, V)> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    kvs.push((
        "tokenizer.ggml.tokens".into(),
        V::Arr(8, all.iter().map(|t| V::Str(t.clone())).collect()),
    ));
    if let Some(types) = g.get_array("tokenizer.ggml.token_type").unwrap() {
        let mut t: Vec<V> = types
            .ints()
            .unwrap()
            .take(n)
            .map(|x| V::I32(x as i32))
            .collect();
        t.extend(extra.iter().map(|_| V::I32(3)));
        kvs.push(("tokenizer.ggml.token_type".into(), V::Arr(5, t)));
    }
    if let Some(scores) = g.get_array("tokenizer.ggml.scores").unwrap() {
        let mut s: Vec<V> = scores.f32s().unwrap().take(n).map(V::F32).collect();
        s.extend(extra.iter().map(|_| V::F32(0.0)));
        kvs.push(("tokenizer.ggml.scores".into(), V::Arr(6, s)));
    }
    if let Some(merges) = g.get_array("tokenizer.ggml.merges").unwrap() {
        let kept: Vec<V> = merges
            .strings()
            .unwrap()
            .filter(|m| {
                let Some(p) = m.iter().position(|&b| b == b' ') else {
                    return false;
                };
                let joined: Vec<u8> = [&m[..p], &m[p + 1..]].concat();
                set.contains(&m[..p])
                    && set.contains(&m[p + 1..])
                    && set.contains(joined.as_slice())
            })
            .map(|m| V::Str(m.to_vec()))
            .collect();
        kvs.push(("tokenizer.ggml.merges".into(), V::Arr(8, kept)));
    }
    let refs: Vec<(&str, V)> = kvs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    Some(Seed::new(build(&refs, &[])))
}

/// A GGUF model fixture rebuilt with the builder (so its header fields are known), with its
/// metadata and tensors as they are.
fn model_seed(path: &str) -> Option<Seed> {
    let bytes = std::fs::read(fixture(path)?).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let kvs: Vec<(String, V)> = g
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_string(), to_v(*v)))
        .collect();
    let refs: Vec<(&str, V)> = kvs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tensors: Vec<T> = g
        .tensors()
        .iter()
        .map(|t| T {
            name: t.name.to_string(),
            dims: t.dims.iter().map(|&d| d as u64).collect(),
            type_id: ggml_id(t.ty.name()),
            data: g.data(t).to_vec(),
        })
        .collect();
    let seed = Seed::new(build(&refs, &tensors));
    assert!(Gguf::parse(&seed.bytes).is_ok(), "{path} rebuilt");
    Some(seed)
}

fn ggml_id(name: &str) -> u32 {
    match name {
        "F32" => 0,
        "F16" => 1,
        "Q4_0" => 2,
        "Q8_0" => 8,
        "Q4_K" => 12,
        "Q6_K" => 14,
        "BF16" => 30,
        other => panic!("no id for {other}"),
    }
}

/// Small tensors of every type baremetal decodes, and one it does not (Q5_K), with random
/// bytes, for the dequantisers.
fn tensor_seed() -> Seed {
    let mut rng = Rng::new(3);
    let mut data = |n: usize| (0..n).map(|_| rng.below(256) as u8).collect::<Vec<u8>>();
    let t = |name: &str, dims: Vec<u64>, type_id: u32, data: Vec<u8>| T {
        name: name.into(),
        dims,
        type_id,
        data,
    };
    let tensors = [
        t("f32", vec![8, 2], 0, data(64)),
        t("f16", vec![16], 1, data(32)),
        t("q4_0", vec![64], 2, data(36)),
        t("q8_0", vec![32, 2], 8, data(68)),
        t("q4_k", vec![256], 12, data(144)),
        t("q5_k", vec![256], 13, data(176)),
        t("q6_k", vec![256], 14, data(210)),
        t("bf16", vec![2, 2, 1, 1], 30, data(8)),
    ];
    Seed::new(build(
        &[("general.architecture", V::str("llama"))],
        &tensors,
    ))
}

/// Everything a consumer may read from a parsed file. Returns how far it got: 0 refused,
/// 1 parsed, 2 tokenizer built too.
fn exercise(bytes: &[u8]) -> usize {
    let Ok(g) = Gguf::parse(bytes) else { return 0 };
    fn walk(v: Value<'_>, sink: &mut u64) {
        match v {
            Value::Array(a) => {
                for e in a.iter() {
                    walk(e, sink);
                }
                if let Some(it) = a.ints() {
                    *sink += it.count() as u64;
                }
                if let Some(it) = a.f32s() {
                    *sink += it.count() as u64;
                }
                if let Some(it) = a.strings() {
                    *sink += it.count() as u64;
                }
            }
            v => {
                *sink += format!("{v:?}").len() as u64 + v.kind().len() as u64;
                let _ = (v.as_str(), v.as_int(), v.as_float(), v.as_bool());
            }
        }
    }
    let mut sink = 0;
    for (key, value) in g.metadata() {
        walk(*value, &mut sink);
        let _ = (
            g.get_usize(key).is_ok(),
            g.get_f32(key).is_ok(),
            g.get_str(key).is_ok(),
            g.get_bool(key).is_ok(),
            g.get_array(key).is_ok(),
        );
    }
    for t in g.tensors() {
        let data = g.data(t);
        assert_eq!(data.len(), t.range.len());
        let _ = t.rows_cols();
        if t.ty.decodable() && t.elements() <= 1 << 16 {
            let mut out = vec![0.0f32; t.elements()];
            dequantize(t.ty, data, &mut out);
        }
    }
    std::hint::black_box(sink);
    let Ok(tok) = GgufTokenizer::from_gguf(&g) else {
        return 1;
    };
    for text in [
        "Hello world",
        " <s>x</s> 123",
        "\u{1F999}é\n\n",
        "",
        "<|eot_id|>",
    ] {
        for (add, parse) in [(false, false), (true, false), (false, true), (true, true)] {
            let ids = tok.encode(text, add, parse);
            let _ = tok.decode(&ids, add, parse);
        }
    }
    2
}

#[test]
#[ignore = "fuzzing: FUZZ_CASES=10000 cargo test --release -p engine --test fuzz -- --ignored"]
fn fuzz_gguf_reader_dequantisers_and_tokenizer_builder() {
    let gpt2 = |pre: Option<&str>| {
        let mut keys = vec![
            ("tokenizer.ggml.model", V::str("gpt2")),
            ("tokenizer.ggml.bos_token_id", V::U32(0)),
        ];
        if let Some(p) = pre {
            keys.push(("tokenizer.ggml.pre", V::str(p)));
        }
        small_vocab(
            "gguf/vocab/ggml-vocab-gpt-2.gguf",
            600,
            &["<|endoftext|>", "<|eot_id|>"],
            &keys,
        )
    };
    let mut seeds: Vec<Seed> = [
        gpt2(Some("gpt-2")),
        gpt2(Some("llama-bpe")),
        gpt2(Some("smollm")),
        gpt2(None),
        small_vocab(
            "gguf/vocab/ggml-vocab-llama-spm.gguf",
            600,
            &[],
            &[
                ("tokenizer.ggml.model", V::str("llama")),
                ("tokenizer.ggml.add_bos_token", V::Bool(true)),
                ("tokenizer.ggml.eos_token_id", V::U32(2)),
            ],
        ),
        model_seed("gguf/models/stories260K-q4_0.gguf"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if seeds.is_empty() {
        return;
    }
    for s in &seeds {
        assert_eq!(exercise(&s.bytes), 2, "a seed does not build a tokenizer");
    }
    seeds.push(tensor_seed());
    let refs: Vec<&[u8]> = seeds.iter().map(|s| s.bytes.as_slice()).collect();
    let mut reached = [0usize; 3];
    run("gguf", cases(), |rng, input| {
        let s = &seeds[rng.below(seeds.len())];
        *input = s.bytes.clone();
        mutate(rng, input, &s.fields, &refs);
        let mut level = 0;
        let largest = largest_alloc_in(|| level = exercise(input));
        reached[level] += 1;
        (largest, alloc_bound(input.len()))
    });
    eprintln!(
        "gguf: {} seeds; of the mutated files {} were refused, {} parsed without a tokenizer, {} built one",
        seeds.len(),
        reached[0],
        reached[1],
        reached[2]
    );
}

#[test]
#[ignore = "fuzzing: FUZZ_CASES=10000 cargo test --release -p engine --test fuzz -- --ignored"]
fn fuzz_gguf_model_loader_and_one_step() {
    let seeds: Vec<Seed> = [
        "gguf/models/stories260K-f32.gguf",
        "gguf/models/stories260K-f16.gguf",
        "gguf/models/stories260K-q8_0.gguf",
        "gguf/models/stories260K-q4_0.gguf",
    ]
    .into_iter()
    .filter_map(model_seed)
    .collect();
    if seeds.is_empty() {
        return;
    }
    let refs: Vec<&[u8]> = seeds.iter().map(|s| s.bytes.as_slice()).collect();
    let dir = common::temp_dir("fuzz-model");
    let path = dir.join("m.gguf");
    let mut outcome = [0usize; 3];
    // A tenth of the cases: each writes a file and loads a model.
    run("model", cases().div_ceil(10), |rng, input| {
        let s = &seeds[rng.below(seeds.len())];
        *input = s.bytes.clone();
        mutate(rng, input, &s.fields, &refs);
        std::fs::write(&path, &*input).unwrap();
        let mut level = 0;
        let largest = largest_alloc_in(|| {
            let Ok(model) = Model::open(&path, Realign::IfMisaligned) else {
                return;
            };
            level = 1;
            let options = SessionOptions {
                positions: Some(8),
                ..Default::default()
            };
            let mut session =
                Session::with_options(&model, Backend::generic(None).unwrap(), options);
            let bos = rng.below(model.config().vocab_size + 2) as u32;
            if session.step(bos).is_ok() {
                level = 2;
            }
        });
        outcome[level] += 1;
        (largest, alloc_bound(input.len()))
    });
    std::fs::remove_dir_all(&dir).ok();
    eprintln!(
        "model: of the mutated files {} were refused, {} loaded but refused the step, {} ran a step",
        outcome[0], outcome[1], outcome[2]
    );
}

fn random_text(rng: &mut Rng, corpus: &[&[u8]]) -> String {
    match rng.below(5) {
        // Random bytes made text.
        0 => {
            let b: Vec<u8> = (0..rng.below(64)).map(|_| rng.below(256) as u8).collect();
            String::from_utf8_lossy(&b).into_owned()
        }
        // Long runs of what pre-tokenizers split on.
        1 => {
            let unit = [" ", "\n", "\t", "0", "'", "'s", "\r\n", "  \n", "1234"][rng.below(9)];
            unit.repeat(1 + rng.below(300))
        }
        // Random code points of every plane, with specials and whitespace mixed in.
        2 => {
            let mut s = String::new();
            for _ in 0..rng.below(40) {
                match rng.below(6) {
                    0 => s.push_str(
                        [
                            "<s>",
                            "</s>",
                            "<|eot_id|>",
                            "<|begin_of_text|>",
                            "<unk>",
                            "<|endoftext|>",
                        ][rng.below(6)],
                    ),
                    1 => s.push([' ', '\n', '\t', '\r', '\u{a0}', '\u{3000}', '\''][rng.below(7)]),
                    2 => s.push(char::from_u32(rng.below(0x80) as u32).unwrap_or('a')),
                    _ => s.extend(char::from_u32(rng.below(0x11_0000) as u32)),
                }
            }
            s
        }
        // Mutated test texts.
        _ => {
            let mut t = corpus[rng.below(corpus.len())].to_vec();
            mutate(rng, &mut t, &[], corpus);
            String::from_utf8_lossy(&t).into_owned()
        }
    }
}

#[test]
#[ignore = "fuzzing: FUZZ_CASES=10000 cargo test --release -p engine --test fuzz -- --ignored"]
fn fuzz_tokenizers_on_text() {
    let mut toks = Vec::new();
    let mut corpus_files = Vec::new();
    for name in ["llama-spm", "llama-bpe", "gpt-2"] {
        let Some(p) = fixture(&format!("gguf/vocab/ggml-vocab-{name}.gguf")) else {
            return;
        };
        let bytes = std::fs::read(&p).unwrap();
        toks.push(GgufTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap());
        corpus_files.push(std::fs::read(format!("{}.inp", p.display())).unwrap());
    }
    let sep = b"\n__ggml_vocab_test__\n";
    let mut corpus: Vec<&[u8]> = Vec::new();
    for f in &corpus_files {
        let mut rest = &f[..];
        while let Some(p) = rest.windows(sep.len()).position(|w| w == sep) {
            corpus.push(&rest[..p]);
            rest = &rest[p + sep.len()..];
        }
    }
    let mut case = 0usize;
    run("tokenizer", cases(), |rng, input| {
        let tok = &toks[case % toks.len()];
        case += 1;
        let text = random_text(rng, &corpus);
        *input = text.clone().into_bytes();
        let (add, parse) = (rng.below(2) == 0, rng.below(2) == 0);
        let largest = largest_alloc_in(|| {
            let ids = tok.encode(&text, add, parse);
            let _ = tok.decode(&ids, rng.below(2) == 0, rng.below(2) == 0);
            // Byte-level BPE without special tokens in play gives the bytes back exactly.
            if !parse && !add && matches!(tok.kind(), Kind::Bpe(_)) {
                let pieces: Vec<u8> = ids
                    .iter()
                    .flat_map(|&i| tok.piece(i, false).to_vec())
                    .collect();
                assert_eq!(
                    String::from_utf8_lossy(&pieces),
                    text,
                    "BPE pieces do not give the text back"
                );
            }
            let mut random_ids = ids;
            random_ids.extend(
                (0..rng.below(8)).map(|_| (rng.next_u64() % (tok.vocab_size() as u64 + 10)) as u32),
            );
            let mut prev = 0;
            let mut out = Vec::new();
            for &id in &random_ids {
                out.extend_from_slice(tok.decode_piece(prev, id));
                let _ = tok.piece(id, rng.below(2) == 0);
                prev = id;
            }
            let _ = tok.decode(&random_ids, true, true);
            std::hint::black_box(out);
        });
        (largest, alloc_bound(input.len()))
    });
}

/// A GGUF claiming a context of 2^20 positions made every session compute RoPE tables for all
/// of them (2 × 64 MiB for this 1 MB file with 32-value heads), even for a KV cache of 8
/// positions. Found by fuzzing the model loader (helper branch `fuzz`); not ignored.
#[test]
fn a_session_computes_rope_only_for_the_positions_it_holds() {
    let Some(path) = fixture("gguf/models/stories260K-f32.gguf") else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let changed = [
        ("llama.context_length", V::U32(1 << 20)),
        ("llama.attention.head_count", V::U32(2)),
        ("llama.attention.head_count_kv", V::U32(1)),
        ("llama.rope.dimension_count", V::U32(32)),
    ];
    let kvs: Vec<(String, V)> = g
        .metadata()
        .iter()
        .map(|(k, v)| {
            let v = changed
                .iter()
                .find(|(c, _)| c == k)
                .map_or_else(|| to_v(*v), |(_, v)| v.clone());
            (k.to_string(), v)
        })
        .collect();
    let refs: Vec<(&str, V)> = kvs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tensors: Vec<T> = g
        .tensors()
        .iter()
        .map(|t| T {
            name: t.name.to_string(),
            dims: t.dims.iter().map(|&d| d as u64).collect(),
            type_id: ggml_id(t.ty.name()),
            data: g.data(t).to_vec(),
        })
        .collect();
    let file = build(&refs, &tensors).0;
    let dir = common::temp_dir("fuzz-rope");
    let path = dir.join("long-context.gguf");
    std::fs::write(&path, &file).unwrap();
    let model = Model::open(&path, Realign::Never).unwrap();
    assert_eq!(model.config().seq_len, 1 << 20);
    assert_eq!(model.config().head_dim(), 32);
    let largest = largest_alloc_in(|| {
        let options = SessionOptions {
            positions: Some(8),
            ..Default::default()
        };
        let mut session = Session::with_options(&model, Backend::generic(None).unwrap(), options);
        assert!(session.step(1).unwrap().iter().all(|l| l.is_finite()));
    });
    std::fs::remove_dir_all(&dir).ok();
    // What stays sized by the claimed context: a row of attention scores per thread (4 MiB).
    assert!(
        largest <= 16 << 20,
        "a session of 8 positions allocated {largest} bytes at once for a {}-byte file",
        file.len()
    );
}
