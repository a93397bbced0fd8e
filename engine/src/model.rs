//! Opening a checkpoint: mmap it, parse and check the header, and hand out typed views of
//! the weights. The views borrow the mapping; nothing is copied unless realignment is asked for.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use model_config::{CheckpointFormat, CheckpointLayout, ModelConfig, TensorSpan};

use crate::aligned::AlignedBytes;
use crate::error::LoadError;

#[cfg(target_endian = "big")]
compile_error!("llama2.c checkpoints are little-endian and are read in place");

/// How the weight bytes are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The file is memory-mapped and read in place (zero-copy).
    ZeroCopy,
    /// The file was copied once into a buffer where the first tensor is 64-byte aligned.
    Realigned,
}

/// Whether to copy a checkpoint into 64-byte aligned memory at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Realign {
    /// Map the file as it is (zero-copy); tensors are as aligned as the file makes them.
    #[default]
    Never,
    /// Copy when the first tensor is not 64-byte aligned in the file (e.g. v0, header 28 bytes).
    IfMisaligned,
}

enum Storage {
    Mapped(Mmap),
    Copied { buf: AlignedBytes, shift: usize },
}

/// An opened checkpoint.
pub struct Model {
    path: PathBuf,
    layout: CheckpointLayout,
    storage: Storage,
}

/// The weights of a whole model, as f32 slices into the checkpoint.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    cfg: &'a ModelConfig,
    /// `(vocab, dim)`
    pub token_embedding: &'a [f32],
    /// `(layers, dim)`
    pub rms_att: &'a [f32],
    /// `(layers, dim, dim)`
    pub wq: &'a [f32],
    /// `(layers, kv_dim, dim)`
    pub wk: &'a [f32],
    /// `(layers, kv_dim, dim)`
    pub wv: &'a [f32],
    /// `(layers, dim, dim)`
    pub wo: &'a [f32],
    /// `(layers, dim)`
    pub rms_ffn: &'a [f32],
    /// `(layers, hidden, dim)`
    pub w1: &'a [f32],
    /// `(layers, dim, hidden)`
    pub w2: &'a [f32],
    /// `(layers, hidden, dim)`
    pub w3: &'a [f32],
    /// `(dim)`
    pub rms_final: &'a [f32],
    /// `(vocab, dim)`: the token embedding when the classifier is shared.
    pub wcls: &'a [f32],
}

/// One layer's weights.
#[derive(Clone, Copy)]
pub struct LayerWeights<'a> {
    /// Attention RMSNorm weight `(dim)`.
    pub rms_att: &'a [f32],
    /// Query projection `(dim, dim)`.
    pub wq: &'a [f32],
    /// Key projection `(kv_dim, dim)`.
    pub wk: &'a [f32],
    /// Value projection `(kv_dim, dim)`.
    pub wv: &'a [f32],
    /// Output projection `(dim, dim)`.
    pub wo: &'a [f32],
    /// FFN RMSNorm weight `(dim)`.
    pub rms_ffn: &'a [f32],
    /// Gate projection `(hidden, dim)`.
    pub w1: &'a [f32],
    /// Down projection `(dim, hidden)`.
    pub w2: &'a [f32],
    /// Up projection `(hidden, dim)`.
    pub w3: &'a [f32],
}

impl<'a> Weights<'a> {
    /// The weights of layer `l`.
    pub fn layer(&self, l: usize) -> LayerWeights<'a> {
        let c = self.cfg;
        let (d, h, kv) = (c.dim, c.hidden_dim, c.kv_dim());
        let part = |t: &'a [f32], n: usize| &t[l * n..(l + 1) * n];
        LayerWeights {
            rms_att: part(self.rms_att, d),
            wq: part(self.wq, d * d),
            wk: part(self.wk, kv * d),
            wv: part(self.wv, kv * d),
            wo: part(self.wo, d * d),
            rms_ffn: part(self.rms_ffn, d),
            w1: part(self.w1, h * d),
            w2: part(self.w2, d * h),
            w3: part(self.w3, h * d),
        }
    }

    /// The embedding row of `token`.
    pub fn embedding(&self, token: usize) -> &'a [f32] {
        let d = self.cfg.dim;
        &self.token_embedding[token * d..(token + 1) * d]
    }
}

impl Model {
    /// Opens `path`, checks its header against its size, and maps it.
    pub fn open(path: &Path, realign: Realign) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len() as usize;
        // SAFETY: the mapping is read-only and private to this process; like every mmap
        // reader we rely on nobody truncating the file while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
        let layout = CheckpointLayout::parse(&map[..map.len().min(256)], len, name).map_err(|source| {
            LoadError::Header {
                path: path.to_path_buf(),
                source,
            }
        })?;
        #[cfg(unix)]
        {
            // Decode reads every weight once per token, front to back.
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        let storage = if realign == Realign::IfMisaligned && layout.header_bytes % 64 != 0 {
            let shift = (64 - layout.header_bytes % 64) % 64;
            let mut buf = AlignedBytes::zeros(shift + map.len());
            buf[shift..].copy_from_slice(&map);
            Storage::Copied { buf, shift }
        } else {
            Storage::Mapped(map)
        };
        Ok(Self {
            path: path.to_path_buf(),
            layout,
            storage,
        })
    }

    /// The file this model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's shape as its header states it.
    pub fn config(&self) -> &ModelConfig {
        &self.layout.config
    }

    /// The header's layout of every tensor.
    pub fn layout(&self) -> &CheckpointLayout {
        &self.layout
    }

    /// The file format.
    pub fn format(&self) -> CheckpointFormat {
        self.layout.format
    }

    /// Zero-copy or realigned.
    pub fn placement(&self) -> Placement {
        match self.storage {
            Storage::Mapped(_) => Placement::ZeroCopy,
            Storage::Copied { .. } => Placement::Realigned,
        }
    }

    /// The largest power of two (up to 64) that divides the address of every weight matrix.
    pub fn weight_alignment(&self) -> usize {
        let base = self.bytes().as_ptr() as usize;
        let l = &self.layout;
        [l.token_embedding, l.wq, l.wk, l.wv, l.wo, l.w1, l.w2, l.w3]
            .iter()
            .chain(l.wcls.iter())
            .map(|s| 1usize << (base + s.offset).trailing_zeros().min(6))
            .min()
            .unwrap_or(64)
    }

    /// One line for `inspect` and `bench`: how the weights are served and how aligned they are.
    pub fn placement_summary(&self) -> String {
        let how = match self.placement() {
            Placement::ZeroCopy => "memory-mapped in place (zero-copy)",
            Placement::Realigned => "copied once into 64-byte aligned memory",
        };
        format!("{how}; weight matrices {}-byte aligned", self.weight_alignment())
    }

    fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m,
            Storage::Copied { buf, shift } => &buf[*shift..],
        }
    }

    fn tensor(&self, span: TensorSpan) -> &[f32] {
        let bytes = &self.bytes()[span.offset..span.end()];
        // Mappings are page-aligned and every tensor offset is a multiple of 4, so the cast is
        // aligned; the assertion guards the invariant rather than any input.
        assert_eq!(bytes.as_ptr() as usize % 4, 0, "tensor not 4-byte aligned");
        // SAFETY: `bytes` is `4 * span.len` initialised bytes, aligned for f32, and any bit
        // pattern is a valid f32; it lives as long as `self`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), span.len) }
    }

    /// Typed views of every weight.
    pub fn weights(&self) -> Weights<'_> {
        let l = &self.layout;
        let token_embedding = self.tensor(l.token_embedding);
        Weights {
            cfg: &l.config,
            token_embedding,
            rms_att: self.tensor(l.rms_att),
            wq: self.tensor(l.wq),
            wk: self.tensor(l.wk),
            wv: self.tensor(l.wv),
            wo: self.tensor(l.wo),
            rms_ffn: self.tensor(l.rms_ffn),
            w1: self.tensor(l.w1),
            w2: self.tensor(l.w2),
            w3: self.tensor(l.w3),
            rms_final: self.tensor(l.rms_final),
            wcls: l.wcls.map_or(token_embedding, |s| self.tensor(s)),
        }
    }
}
