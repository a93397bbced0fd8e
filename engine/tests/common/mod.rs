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
