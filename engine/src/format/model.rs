//! Opening a checkpoint: mmap it, parse and check the header, and hand out typed views of
//! the weights (f32, int8 + f32 scales for Q8_0 v2 files, packed nibbles + f32 scales for
//! Q4_0 v3 files). The views borrow the mapping;
//! nothing is copied unless realignment is asked for.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use model_config::{
    CheckpointFormat, CheckpointLayout, MatrixSpan, ModelConfig, QuantSpan, TensorSpan,
};

use std::collections::HashMap;
use std::sync::OnceLock;

use model_config::tiled;

use crate::base::aligned::{AlignedBytes, AlignedVec};
use crate::format::error::LoadError;
use crate::format::quant::{Q4Ref, Q8Ref};

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
    /// Tiled copies of the int8 matrices, made on the first [`Model::tiled_weights`] call.
    tiled: OnceLock<Tiled>,
}

/// Tiled copies of the Q8_0 / Q4_0 matrices that have generated kernels, keyed by the byte
/// offset of the matrix (one layer's slice) in the file.
#[derive(Default)]
struct Tiled {
    matrices: HashMap<usize, (AlignedBytes, AlignedVec)>,
}

/// One weight matrix as stored: f32 values, or Q8_0 int8 values with their scales.
#[derive(Debug, Clone, Copy)]
pub enum MatRef<'a> {
    /// Row-major f32.
    F32(&'a [f32]),
    /// Row-major int8 with one f32 scale per group.
    Q8(Q8Ref<'a>),
    /// Row-major 4-bit values, two per byte, with one f32 scale per group.
    Q4(Q4Ref<'a>),
    /// Q8_0 rearranged for the generated int8 kernels (`model_config::tiled`).
    Q8Tiled(Q8Ref<'a>),
    /// Q4_0 rearranged for the generated 4-bit kernels (`model_config::tiled`).
    Q4Tiled(Q4Ref<'a>),
}

impl MatRef<'_> {
    /// Writes row `r` (of rows with `out.len()` values) into `out` as f32: a copy, or a
    /// dequantisation for Q8_0 (the token embedding is looked up one row at a time; llama2.c
    /// dequantises the whole table at load instead).
    #[inline]
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            MatRef::F32(w) => out.copy_from_slice(&w[r * n..(r + 1) * n]),
            MatRef::Q8(w) => w.dequantize_into(r * n..(r + 1) * n, out),
            MatRef::Q4(w) => w.dequantize_into(r * n..(r + 1) * n, out),
            MatRef::Q8Tiled(_) | MatRef::Q4Tiled(_) => {
                unreachable!("the token embedding is never tiled")
            }
        }
    }
}

/// The weights of a whole model, as views into the checkpoint.
#[derive(Clone)]
pub struct Weights<'a> {
    /// `(vocab, dim)`
    pub token_embedding: MatRef<'a>,
    /// `(dim)`
    pub rms_final: &'a [f32],
    /// `(vocab, dim)`: the token embedding when the classifier is shared.
    pub wcls: MatRef<'a>,
    layers: Vec<LayerWeights<'a>>,
}

/// One layer's weights.
#[derive(Clone, Copy)]
pub struct LayerWeights<'a> {
    /// Attention RMSNorm weight `(dim)`.
    pub rms_att: &'a [f32],
    /// Query projection `(dim, dim)`.
    pub wq: MatRef<'a>,
    /// Key projection `(kv_dim, dim)`.
    pub wk: MatRef<'a>,
    /// Value projection `(kv_dim, dim)`.
    pub wv: MatRef<'a>,
    /// Output projection `(dim, dim)`.
    pub wo: MatRef<'a>,
    /// FFN RMSNorm weight `(dim)`.
    pub rms_ffn: &'a [f32],
    /// Gate projection `(hidden, dim)`.
    pub w1: MatRef<'a>,
    /// Down projection `(dim, hidden)`.
    pub w2: MatRef<'a>,
    /// Up projection `(hidden, dim)`.
    pub w3: MatRef<'a>,
}

impl<'a> Weights<'a> {
    /// The weights of layer `l`.
    #[inline]
    pub fn layer(&self, l: usize) -> LayerWeights<'a> {
        self.layers[l]
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
        let layout =
            CheckpointLayout::parse(&map[..map.len().min(256)], len, name).map_err(|source| {
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
            tiled: OnceLock::new(),
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

    /// The largest power of two (up to 64) that divides the address of every weight matrix
    /// (of every layer's int8 values, for Q8_0).
    pub fn weight_alignment(&self) -> usize {
        let base = self.bytes().as_ptr() as usize;
        self.layout
            .matrices()
            .iter()
            .flat_map(|(_, m)| m.value_offsets())
            .map(|offset| 1usize << (base + offset).trailing_zeros().min(6))
            .min()
            .unwrap_or(64)
    }

    /// One line for `inspect` and `bench`: how the weights are served and how aligned they are.
    pub fn placement_summary(&self) -> String {
        let how = match self.placement() {
            Placement::ZeroCopy => "memory-mapped in place (zero-copy)",
            Placement::Realigned => "copied once into 64-byte aligned memory",
        };
        let tiled = match self.tiled.get() {
            Some(t) if !t.matrices.is_empty() => format!(
                "; {} int8 matrices tiled once into aligned memory for the generated kernels",
                t.matrices.len()
            ),
            _ => String::new(),
        };
        format!(
            "{how}; weight matrices {}-byte aligned{tiled}",
            self.weight_alignment()
        )
    }

    fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m,
            Storage::Copied { buf, shift } => &buf[*shift..],
        }
    }

    fn tensor(&self, span: TensorSpan) -> &[f32] {
        let bytes = &self.bytes()[span.offset..span.end()];
        // Mappings are page-aligned and every f32 offset is a multiple of 4 (the header parser
        // refuses v2 files whose scales are not), so the cast is aligned; the assertion guards
        // the invariant rather than any input.
        assert_eq!(bytes.as_ptr() as usize % 4, 0, "tensor not 4-byte aligned");
        // SAFETY: `bytes` is `4 * span.len` initialised bytes, aligned for f32, and any bit
        // pattern is a valid f32; it lives as long as `self`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), span.len) }
    }

    fn quantized(&self, span: QuantSpan) -> Q8Ref<'_> {
        let bytes = &self.bytes()[span.offset..span.offset + span.len];
        // SAFETY: i8 has the size and alignment of u8 and every bit pattern is valid.
        let q = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), span.len) };
        Q8Ref {
            q,
            scales: self.tensor(span.scales()),
            group: span.group,
        }
    }

    fn quantized_q4(&self, span: QuantSpan) -> Q4Ref<'_> {
        Q4Ref {
            q: &self.bytes()[span.offset..span.offset + span.value_bytes()],
            scales: self.tensor(span.scales()),
            group: span.group,
        }
    }

    /// Layer `layer` (of `layers`) of a matrix.
    fn matrix(&self, m: &MatrixSpan, layer: usize, layers: usize) -> MatRef<'_> {
        match m {
            MatrixSpan::F32(span) => {
                let all = self.tensor(*span);
                let n = all.len() / layers;
                MatRef::F32(&all[layer * n..(layer + 1) * n])
            }
            MatrixSpan::Q8(spans) => MatRef::Q8(self.quantized(spans[layer])),
            MatrixSpan::Q4(spans) => MatRef::Q4(self.quantized_q4(spans[layer])),
        }
    }

    /// An f32 tensor by its layout name (`rms_att`, `wq`, ...): the whole tensor, or one
    /// layer's part of it. `None` when it is absent or not f32 (a Q8_0 or Q4_0 matrix).
    pub fn f32_tensor(&self, name: &str, layer: Option<usize>) -> Option<&[f32]> {
        let l = &self.layout;
        let layers = l.config.n_layers;
        let per_layer = |span: TensorSpan| {
            let all = self.tensor(span);
            match layer {
                None => all,
                Some(i) => &all[i * all.len() / layers..(i + 1) * all.len() / layers],
            }
        };
        match name {
            "rms_att" => return Some(per_layer(l.rms_att)),
            "rms_ffn" => return Some(per_layer(l.rms_ffn)),
            "rms_final" => return Some(self.tensor(l.rms_final)),
            _ => {}
        }
        let (_, m) = l.matrices().into_iter().find(|(n, _)| *n == name)?;
        match m {
            MatrixSpan::F32(span) if matches!(name, "token_embedding" | "wcls") => {
                Some(self.tensor(*span))
            }
            MatrixSpan::F32(span) => Some(per_layer(*span)),
            MatrixSpan::Q8(_) | MatrixSpan::Q4(_) => None,
        }
    }

    /// Views of every weight (f32 or Q8_0, as stored). Allocates the per-layer table once.
    pub fn weights(&self) -> Weights<'_> {
        self.weights_with(&|m, layer, layers| self.matrix(m, layer, layers))
    }

    /// The same views, except that the int8 matrices with a generated kernel (a shape in
    /// `generated::Q8_SHAPES` / `Q4_SHAPES` at the compiled group size) are tiled copies for
    /// those kernels. The copies are made once, on the first call (about one pass over the
    /// weights), and kept with the model; the token embedding stays as stored because it is
    /// read one row at a time. For a model of another shape than the compiled one this is
    /// [`Model::weights`].
    pub fn tiled_weights(&self) -> Weights<'_> {
        if !self.layout.config.same_shape(&super::compiled_config()) {
            return self.weights();
        }
        let tiled = self.tiled.get_or_init(|| self.tile());
        self.weights_with(&|m, layer, layers| {
            let plain = self.matrix(m, layer, layers);
            let span = match m {
                MatrixSpan::Q8(spans) | MatrixSpan::Q4(spans) => spans[layer],
                MatrixSpan::F32(_) => return plain,
            };
            let Some((q, scales)) = tiled.matrices.get(&span.offset) else {
                return plain;
            };
            match plain {
                MatRef::Q8(w) => MatRef::Q8Tiled(Q8Ref {
                    q: q.as_i8(),
                    scales,
                    group: w.group,
                }),
                MatRef::Q4(w) => MatRef::Q4Tiled(Q4Ref {
                    q,
                    scales,
                    group: w.group,
                }),
                other => other,
            }
        })
    }

    /// (rows, cols) of each matrix by layout name.
    fn shape_of(&self, name: &str) -> (usize, usize) {
        let c = &self.layout.config;
        match name {
            "wq" | "wo" => (c.dim, c.dim),
            "wk" | "wv" => (c.kv_dim(), c.dim),
            "w1" | "w3" => (c.hidden_dim, c.dim),
            "w2" => (c.dim, c.hidden_dim),
            _ => (c.vocab_size, c.dim),
        }
    }

    /// Tiles every int8 matrix whose shape and group have a generated kernel.
    fn tile(&self) -> Tiled {
        let mut out = Tiled::default();
        for (name, m) in self.layout.matrices() {
            let (rows, cols) = self.shape_of(name);
            let (spans, q4): (&[QuantSpan], bool) = match m {
                MatrixSpan::Q8(spans) => (spans, false),
                MatrixSpan::Q4(spans) => (spans, true),
                MatrixSpan::F32(_) => continue,
            };
            for &span in spans {
                let has_kernel = if q4 {
                    span.group == generated::Q4_GROUP
                        && generated::Q4_SHAPES.contains(&(rows, cols))
                } else {
                    span.group == generated::Q8_GROUP
                        && generated::Q8_SHAPES.contains(&(rows, cols))
                };
                if !has_kernel || out.matrices.contains_key(&span.offset) {
                    continue;
                }
                let mut q = AlignedBytes::zeros(span.value_bytes());
                let mut scales = AlignedVec::zeros(span.len / span.group);
                if q4 {
                    let w = self.quantized_q4(span);
                    tiled::tile_q4(w.q, w.scales, cols, span.group, &mut q, &mut scales);
                } else {
                    let w = self.quantized(span);
                    tiled::tile_q8(w.q, w.scales, cols, span.group, q.as_i8_mut(), &mut scales);
                }
                out.matrices.insert(span.offset, (q, scales));
            }
        }
        out
    }

    /// Builds [`Weights`] with `matrix(span, layer, layers)` for every matrix (the classifier
    /// is one layer of one).
    fn weights_with<'s>(
        &'s self,
        matrix: &dyn Fn(&'s MatrixSpan, usize, usize) -> MatRef<'s>,
    ) -> Weights<'s> {
        let l = &self.layout;
        let c = &l.config;
        let (d, layers) = (c.dim, c.n_layers);
        let rms_att = self.tensor(l.rms_att);
        let rms_ffn = self.tensor(l.rms_ffn);
        let token_embedding = self.matrix(&l.token_embedding, 0, 1);
        let cls = l.wcls.as_ref().unwrap_or(&l.token_embedding);
        Weights {
            token_embedding,
            rms_final: self.tensor(l.rms_final),
            wcls: matrix(cls, 0, 1),
            layers: (0..layers)
                .map(|i| LayerWeights {
                    rms_att: &rms_att[i * d..(i + 1) * d],
                    wq: matrix(&l.wq, i, layers),
                    wk: matrix(&l.wk, i, layers),
                    wv: matrix(&l.wv, i, layers),
                    wo: matrix(&l.wo, i, layers),
                    rms_ffn: &rms_ffn[i * d..(i + 1) * d],
                    w1: matrix(&l.w1, i, layers),
                    w2: matrix(&l.w2, i, layers),
                    w3: matrix(&l.w3, i, layers),
                })
                .collect(),
        }
    }
}
