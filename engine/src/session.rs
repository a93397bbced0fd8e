//! A model, its kernels and its run state bundled for decoding one sequence.

use thiserror::Error;

use crate::backend::Backend;
use crate::forward::forward;
use crate::model::{Model, Weights};
use crate::state::{KvCacheType, Rope, RunState};

/// Why a decode step was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StepError {
    /// Every position of the context is used.
    #[error("the context is full: the model's seq_len is {seq_len} positions")]
    ContextFull {
        /// The model's context length.
        seq_len: usize,
    },
    /// The token id is not in the vocabulary.
    #[error("token id {token} is outside the model's vocabulary of {vocab} tokens")]
    BadToken {
        /// The id given.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
}

/// Decoding state for one sequence on one model.
pub struct Session<'m> {
    model: &'m Model,
    weights: Weights<'m>,
    backend: Backend,
    rope: Rope,
    state: RunState,
    pos: usize,
}

impl<'m> Session<'m> {
    /// Allocates every buffer the decode loop needs, once, with an f32 KV cache.
    pub fn new(model: &'m Model, backend: Backend) -> Self {
        Self::with_kv_cache(model, backend, KvCacheType::F32)
    }

    /// As [`Session::new`], with a KV cache of type `kv`.
    pub fn with_kv_cache(model: &'m Model, backend: Backend, kv: KvCacheType) -> Self {
        let cfg = model.config();
        let mut state = RunState::with_kv_cache(cfg, kv);
        // Int8 matrices with a generated kernel run on a tiled copy (made once per model).
        let weights = if backend.tiles_int8() && cfg.weight_format.group_size().is_some() {
            state.xq.tile_inputs();
            model.tiled_weights()
        } else {
            model.weights()
        };
        Self {
            model,
            weights,
            backend: backend.for_weights(cfg.weight_format),
            rope: Rope::new(cfg),
            state,
            pos: 0,
        }
    }

    /// The kernels in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The KV cache's element type.
    pub fn kv_cache(&self) -> KvCacheType {
        self.state.kv.kind()
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The next position to be filled.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forgets the sequence (the cache is overwritten as positions are reused).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Feeds `token` at the next position and returns the logits for the one after it.
    pub fn step(&mut self, token: u32) -> Result<&mut [f32], StepError> {
        let cfg = self.model.config();
        if self.pos >= cfg.seq_len {
            return Err(StepError::ContextFull {
                seq_len: cfg.seq_len,
            });
        }
        if token as usize >= cfg.vocab_size {
            return Err(StepError::BadToken {
                token,
                vocab: cfg.vocab_size,
            });
        }
        let pos = self.pos;
        self.pos += 1;
        Ok(forward(
            &self.backend,
            cfg,
            &self.weights,
            &self.rope,
            &mut self.state,
            token as usize,
            pos,
        ))
    }
}
