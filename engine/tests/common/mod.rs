//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

pub mod quantised;
pub mod runq;

use std::path::{Path, PathBuf};

use engine::fixtures::fixture;
use engine::runtime::backend::compiled_config;
use serde::Deserialize;

/// A fresh, empty directory for this test's files.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("baremetal-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `stories260K.bin` from the fixtures, or `None` (skip) outside CI.
pub fn stories260k() -> Option<PathBuf> {
    fixture("models/stories260K.bin")
}

/// True when this build's compiled shape is stories260K's (the default MODEL_CONFIG).
pub fn compiled_is_stories260k() -> bool {
    let c = compiled_config();
    let ok = c.dim == 64 && c.hidden_dim == 172 && c.n_layers == 5 && c.vocab_size == 512;
    if !ok {
        eprintln!("SKIPPED: this build is specialised for {}, not stories260k (build with MODEL_CONFIG=stories260k)", c.name);
    }
    ok
}

/// The reference greedy run.
#[derive(Deserialize)]
pub struct Greedy {
    pub bos: u32,
    pub tokens: Vec<u32>,
}

/// One position of the reference logits.
#[derive(Deserialize)]
pub struct LogitsPos {
    pub pos: usize,
    pub input: u32,
    pub argmax: u32,
    pub logits_head: Vec<f32>,
    pub top5: Vec<(u32, f32)>,
}

/// The reference logits file.
#[derive(Deserialize)]
pub struct Logits {
    pub positions: Vec<LogitsPos>,
}

/// Parses a JSON fixture.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A model with the Llama 2 vocabulary small enough to run in microseconds per token (random
/// weights), so the real `tokenizer.bin` works with it.
pub fn tiny_32k(dir: &Path, seq_len: usize) -> PathBuf {
    let mut cfg = model_config::preset("stories15m").unwrap();
    (
        cfg.dim,
        cfg.hidden_dim,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.seq_len,
    ) = (16, 24, 1, 2, 1, seq_len);
    cfg.validate().unwrap();
    let path = dir.join(format!("tiny32k_{seq_len}.bin"));
    engine::format::synth::write_checkpoint(&cfg, model_config::CheckpointFormat::V1, 1, &path)
        .unwrap();
    path
}
