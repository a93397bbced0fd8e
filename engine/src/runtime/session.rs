//! A model, its kernels and its run state bundled for decoding one sequence.

use thiserror::Error;

use crate::format::model::{Model, Weights};
use crate::runtime::backend::Backend;
use crate::runtime::forward::{forward, Row};
use crate::runtime::kv::{KvCache, KvCacheType, SeqId};
use crate::runtime::state::{Rope, RunState};

/// Why a decode step was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StepError {
    /// Every position of the context is used.
    #[error("the context is full: all {seq_len} positions are used (--ctx sets how many a run gets, up to the model's context length)")]
    ContextFull {
        /// The positions a sequence can hold.
        seq_len: usize,
    },
    /// The KV cache refused (full, or too many sequences).
    #[error(transparent)]
    Cache(#[from] crate::runtime::kv::KvError),
    /// Nothing to feed.
    #[error("no tokens to feed")]
    Empty,
    /// More rows than the session was sized for.
    #[error("{rows} rows in one pass, but the session was sized for {max}")]
    BatchTooLarge {
        /// Rows given.
        rows: usize,
        /// The most allowed.
        max: usize,
    },
    /// A row's position was not claimed in the cache first.
    #[error("position {pos} was not claimed in the KV cache (KvCache::append) before the pass")]
    Unclaimed {
        /// The position.
        pos: usize,
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

/// How a session is sized: everything is allocated once, when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// The KV cache's element type.
    pub kv_cache: KvCacheType,
    /// The most token rows one forward pass takes: the prompt chunk size, or beams, or
    /// server slots.
    pub batch: usize,
    /// The most rows whose logits one pass computes.
    pub logit_rows: usize,
    /// Sequences the cache holds at once.
    pub sequences: usize,
    /// Positions in the cache for all sequences together (default: the model's context, at
    /// most [`DEFAULT_CONTEXT`], for each sequence).
    pub positions: Option<usize>,
}

/// Positions a sequence gets unless told otherwise (llama.cpp's default `-c 4096`): a GGUF
/// model's `context_length` can be 131072, whose f32 KV cache would take gigabytes.
pub const DEFAULT_CONTEXT: usize = 4096;

/// Prompt tokens per forward pass unless told otherwise (`--batch`): see docs/PERFORMANCE.md.
pub const DEFAULT_BATCH: usize = 64;

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            kv_cache: KvCacheType::F32,
            batch: DEFAULT_BATCH,
            logit_rows: 1,
            sequences: 1,
            positions: None,
        }
    }
}

/// A model, its kernels, a KV cache and the activation buffers. It decodes one sequence of
/// its own (`step`, `prefill`) and, for beam search and servers, any number of sequences in
/// its cache together (`forward_rows`).
pub struct Session<'m> {
    model: &'m Model,
    weights: Weights<'m>,
    backend: Backend,
    rope: Rope,
    state: RunState,
    kv: KvCache,
    /// The session's own sequence.
    seq: SeqId,
    /// Row scratch, reserved for a whole batch.
    rows: Vec<Row>,
}

impl<'m> Session<'m> {
    /// A session with the default options (f32 KV cache, one sequence).
    pub fn new(model: &'m Model, backend: Backend) -> Self {
        Self::with_options(model, backend, SessionOptions::default())
    }

    /// As [`Session::new`], with a KV cache of type `kv`.
    pub fn with_kv_cache(model: &'m Model, backend: Backend, kv: KvCacheType) -> Self {
        Self::with_options(
            model,
            backend,
            SessionOptions {
                kv_cache: kv,
                ..SessionOptions::default()
            },
        )
    }

    /// Allocates every buffer the decode loop needs, once, sized by `options`.
    pub fn with_options(model: &'m Model, backend: Backend, options: SessionOptions) -> Self {
        let cfg = model.config();
        let batch = options.batch.max(1);
        let mut state =
            RunState::with_rows(cfg, batch, options.logit_rows.max(1), backend.threads());
        // Int8 matrices with a generated kernel run on a tiled copy (made once per model).
        let weights = if backend.tiles_int8() && cfg.weight_format.group_size().is_some() {
            state.xq.tile_inputs();
            model.tiled_weights()
        } else {
            model.weights()
        };
        let sequences = options.sequences.max(1);
        let positions = options
            .positions
            .unwrap_or(cfg.seq_len.min(DEFAULT_CONTEXT) * sequences);
        let mut kv = KvCache::new(cfg, options.kv_cache, positions, sequences);
        let seq = kv.create().expect("a new cache has a free sequence");
        Self {
            model,
            weights,
            backend: backend.for_weights(cfg.weight_format),
            // Every position is checked against the context (`check`) before it is rotated.
            rope: Rope::with_positions(cfg, cfg.seq_len.min(kv.capacity())),
            state,
            kv,
            seq,
            rows: Vec::with_capacity(batch),
        }
    }

    /// The kernels in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The KV cache's element type.
    pub fn kv_cache(&self) -> KvCacheType {
        self.kv.kind()
    }

    /// The most rows one forward pass takes.
    pub fn batch(&self) -> usize {
        self.state.rows
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The most positions one sequence can hold: the model's context, or less if the cache
    /// was sized smaller.
    pub fn context(&self) -> usize {
        self.model.config().seq_len.min(self.kv.capacity())
    }

    /// The next position to be filled in the session's own sequence.
    pub fn pos(&self) -> usize {
        self.kv.len(self.seq)
    }

    /// Forgets the sequence.
    pub fn reset(&mut self) {
        self.kv.truncate(self.seq, 0);
    }

    /// Forgets the positions from `len` on (e.g. a chat turn that is taken back).
    pub fn truncate(&mut self, len: usize) {
        self.kv.truncate(self.seq, len);
    }

    /// The session's own sequence (to fork it for beam search).
    pub fn sequence(&self) -> SeqId {
        self.seq
    }

    /// The KV cache, to create, fork, grow and free the sequences [`Session::forward_rows`] runs.
    pub fn kv_mut(&mut self) -> &mut KvCache {
        &mut self.kv
    }

    /// The KV cache.
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    fn check(&self, token: u32, pos: usize) -> Result<(), StepError> {
        let cfg = self.model.config();
        if pos >= self.context() {
            return Err(StepError::ContextFull {
                seq_len: self.context(),
            });
        }
        if token as usize >= cfg.vocab_size {
            return Err(StepError::BadToken {
                token,
                vocab: cfg.vocab_size,
            });
        }
        Ok(())
    }

    /// Feeds `token` at the next position and returns the logits for the one after it.
    pub fn step(&mut self, token: u32) -> Result<&mut [f32], StepError> {
        self.prefill(&[token])
    }

    /// Feeds `tokens` at the next positions, [`Session::batch`] at a time (each matrix read
    /// once per chunk), and returns the logits after the last. The logits are bit for bit what
    /// feeding the tokens one by one with [`Session::step`] gives.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&mut [f32], StepError> {
        let start = self.pos();
        for (i, &t) in tokens.iter().enumerate() {
            self.check(t, start + i)?;
        }
        let Some(last) = tokens.len().checked_sub(1) else {
            return Err(StepError::Empty);
        };
        self.kv
            .append(self.seq, tokens.len())
            .map_err(|_| StepError::ContextFull {
                seq_len: self.context(),
            })?;
        let cfg = self.model.config();
        let mut logits = 0..0;
        for (c, chunk) in tokens.chunks(self.state.rows).enumerate() {
            self.rows.clear();
            let first = c * self.state.rows;
            self.rows
                .extend(chunk.iter().enumerate().map(|(i, &token)| Row {
                    seq: self.seq,
                    token,
                    pos: start + first + i,
                    logits: first + i == last,
                }));
            let l = forward(
                &self.backend,
                cfg,
                &self.weights,
                &self.rope,
                &mut self.state,
                &mut self.kv,
                &self.rows,
            );
            logits = 0..l.len();
        }
        Ok(&mut self.state.logits[logits])
    }

    /// Feeds `tokens` at the next positions (teacher forcing) in batched chunks and calls
    /// `each(i, logits)` with the next-token logits after every token `i`. Chunks are as long as
    /// the session's batch and logit rows allow.
    pub fn forced(
        &mut self,
        tokens: &[u32],
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<(), StepError> {
        let start = self.pos();
        for (i, &t) in tokens.iter().enumerate() {
            self.check(t, start + i)?;
        }
        let chunk = self.state.rows.min(self.state.logit_rows);
        let vocab = self.model.config().vocab_size;
        let cfg = self.model.config();
        for (c, part) in tokens.chunks(chunk).enumerate() {
            self.kv
                .append(self.seq, part.len())
                .map_err(|_| StepError::ContextFull {
                    seq_len: cfg.seq_len,
                })?;
            self.rows.clear();
            let first = c * chunk;
            self.rows
                .extend(part.iter().enumerate().map(|(i, &token)| Row {
                    seq: self.seq,
                    token,
                    pos: start + first + i,
                    logits: true,
                }));
            let logits = forward(
                &self.backend,
                cfg,
                &self.weights,
                &self.rope,
                &mut self.state,
                &mut self.kv,
                &self.rows,
            );
            for (i, l) in logits.chunks_exact(vocab).enumerate() {
                each(first + i, l);
            }
        }
        Ok(())
    }

    /// Runs `rows` of any sequences of this session's cache (each row's position already
    /// claimed with [`KvCache::append`]) and returns the logits of the rows that ask for them,
    /// in order. At most [`Session::batch`] rows.
    pub fn forward_rows(&mut self, rows: &[Row]) -> Result<&mut [f32], StepError> {
        if rows.len() > self.state.rows {
            return Err(StepError::BatchTooLarge {
                rows: rows.len(),
                max: self.state.rows,
            });
        }
        for r in rows {
            self.check(r.token, r.pos)?;
            if r.pos >= self.kv.len(r.seq) {
                return Err(StepError::Unclaimed { pos: r.pos });
            }
        }
        if rows.iter().filter(|r| r.logits).count() > self.state.logit_rows {
            return Err(StepError::BatchTooLarge {
                rows: rows.iter().filter(|r| r.logits).count(),
                max: self.state.logit_rows,
            });
        }
        Ok(forward(
            &self.backend,
            self.model.config(),
            &self.weights,
            &self.rope,
            &mut self.state,
            &mut self.kv,
            rows,
        ))
    }
}
