//! Opening a checkpoint: mmap it, parse and check the header, and hand out typed views of
//! the weights (f32, int8 + f32 scales for Q8_0 v2 files, packed nibbles + f32 scales for
//! Q4_0 v3 files). The views borrow the mapping; nothing is copied unless realignment is
//! asked for. GGUF files (`format::gguf_model`) are mapped too: their f32 tensors are read in
//! place and the others converted once at load into the same views.

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
use crate::format::gguf::Gguf;
use crate::format::gguf_model::{self, GgufModel, Tensor};
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
    source: Source,
    storage: Storage,
    /// Tiled copies of the int8 matrices, made on the first [`Model::tiled_weights`] call.
    tiled: OnceLock<Tiled>,
}

/// What the file is and where its tensors are.
enum Source {
    /// llama2.c v0/v1/v2 or baremetal v3: every tensor at an offset the header implies.
    Llama2c(Box<CheckpointLayout>),
    /// GGUF: tensors by name, some converted at load.
    Gguf(Box<GgufModel>),
}

/// The file format of a [`Model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A llama2.c-family checkpoint.
    Llama2c(CheckpointFormat),
    /// GGUF, of this version.
    Gguf(u32),
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileFormat::Llama2c(c) => c.fmt(f),
            FileFormat::Gguf(v) => write!(f, "GGUF v{v}"),
        }
    }
}

/// Tiled copies of the Q8_0 / Q4_0 matrices that have generated kernels, keyed by the address
/// of the matrix's values.
#[derive(Default)]
struct Tiled {
    matrices: HashMap<usize, (AlignedBytes, AlignedVec)>,
}

impl Tiled {
    /// `m`'s tiled copy, if it has one.
    fn swap<'a>(&'a self, m: MatRef<'a>) -> MatRef<'a> {
        let Some((q, scales)) = self.matrices.get(&m.data_address()) else {
            return m;
        };
        match m {
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
    }
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
    /// The address of the matrix's values (identifies a matrix, e.g. for its tiled copy).
    pub fn data_address(&self) -> usize {
        match self {
            MatRef::F32(w) => w.as_ptr() as usize,
            MatRef::Q8(w) | MatRef::Q8Tiled(w) => w.q.as_ptr() as usize,
            MatRef::Q4(w) | MatRef::Q4Tiled(w) => w.q.as_ptr() as usize,
        }
    }

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
        if map.starts_with(b"GGUF") {
            return Self::open_gguf(path, map, name, realign);
        }
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
            source: Source::Llama2c(Box::new(layout)),
            storage,
            tiled: OnceLock::new(),
        })
    }

    /// A GGUF file: metadata to config, tensors converted where needed (`realign`: f32
    /// matrices off the 64-byte grid are copied into aligned memory, as for v0 files).
    fn open_gguf(path: &Path, map: Mmap, stem: &str, realign: Realign) -> Result<Self, LoadError> {
        let bad = |source: gguf_model::GgufModelError| LoadError::Gguf {
            path: path.to_path_buf(),
            source,
        };
        let g = Gguf::parse(&map).map_err(|e| bad(e.into()))?;
        let cfg = gguf_model::config(&g, stem).map_err(bad)?;
        let mut m = gguf_model::load(&g, cfg).map_err(bad)?;
        if realign == Realign::IfMisaligned {
            let base = map.as_ptr() as usize;
            let fix = |t: &mut Tensor| {
                if let Tensor::Mapped(r) = t {
                    if !(base + r.start).is_multiple_of(64) {
                        let mut v = AlignedVec::zeros(r.len() / 4);
                        for (o, b) in v.iter_mut().zip(map[r.clone()].chunks_exact(4)) {
                            *o = f32::from_le_bytes(b.try_into().expect("four bytes"));
                        }
                        *t = Tensor::F32(v);
                    }
                }
            };
            fix(&mut m.token_embedding);
            if let Some(o) = &mut m.output {
                fix(o);
            }
            for l in &mut m.layers {
                for t in [
                    &mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.w1, &mut l.w2, &mut l.w3,
                ] {
                    fix(t);
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            source: Source::Gguf(Box::new(m)),
            storage: Storage::Mapped(map),
            tiled: OnceLock::new(),
        })
    }

    /// Notes on what loading converted (GGUF K-quants re-quantised, …), for the user.
    pub fn notices(&self) -> &[String] {
        match &self.source {
            Source::Gguf(g) => &g.notices,
            Source::Llama2c(_) => &[],
        }
    }

    /// A GGUF file's tensors, by name with their stored types (`None` for llama2.c files).
    pub fn gguf_tensor_types(&self) -> Option<&[(String, crate::format::ggml::GgmlType)]> {
        match &self.source {
            Source::Gguf(g) => Some(&g.types),
            Source::Llama2c(_) => None,
        }
    }

    /// The mapped file's bytes (GGUF metadata readers, e.g. the tokenizer, parse it again).
    pub fn file_bytes(&self) -> &[u8] {
        self.bytes()
    }

    /// The file this model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's shape as its header states it.
    pub fn config(&self) -> &ModelConfig {
        match &self.source {
            Source::Llama2c(l) => &l.config,
            Source::Gguf(g) => &g.config,
        }
    }

    /// The header's layout of every tensor (llama2.c-family files only).
    pub fn layout(&self) -> Option<&CheckpointLayout> {
        match &self.source {
            Source::Llama2c(l) => Some(l),
            Source::Gguf(_) => None,
        }
    }

    /// The file format.
    pub fn format(&self) -> FileFormat {
        match &self.source {
            Source::Llama2c(l) => FileFormat::Llama2c(l.format),
            Source::Gguf(g) => FileFormat::Gguf(g.version),
        }
    }

    /// Bytes of weights one decode step reads: every matrix, the norms, one embedding row.
    pub fn weight_bytes_per_token(&self) -> usize {
        match &self.source {
            Source::Llama2c(l) => l.config.weight_bytes_per_token(),
            Source::Gguf(g) => {
                let c = &g.config;
                let layers: usize = g
                    .layers
                    .iter()
                    .map(|l| {
                        [
                            &l.rms_att, &l.wq, &l.wk, &l.wv, &l.wo, &l.rms_ffn, &l.w1, &l.w2, &l.w3,
                        ]
                        .iter()
                        .map(|t| t.bytes())
                        .sum::<usize>()
                    })
                    .sum();
                let classifier = g.output.as_ref().unwrap_or(&g.token_embedding).bytes();
                layers + g.rms_final.bytes() + classifier + g.token_embedding.bytes() / c.vocab_size
            }
        }
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
        let align = |p: usize| 1usize << p.trailing_zeros().min(6);
        match &self.source {
            Source::Llama2c(l) => {
                let base = self.bytes().as_ptr() as usize;
                l.matrices()
                    .iter()
                    .flat_map(|(_, m)| m.value_offsets())
                    .map(|offset| align(base + offset))
                    .min()
                    .unwrap_or(64)
            }
            Source::Gguf(_) => {
                let w = self.weights();
                (0..w.layers.len())
                    .flat_map(|i| {
                        let l = w.layer(i);
                        [l.wq, l.wk, l.wv, l.wo, l.w1, l.w2, l.w3]
                    })
                    .chain([w.wcls])
                    .map(|m| align(m.data_address()))
                    .min()
                    .unwrap_or(64)
            }
        }
    }

    /// One line for `inspect` and `bench`: how the weights are served and how aligned they are.
    pub fn placement_summary(&self) -> String {
        let how = match (&self.source, self.placement()) {
            (Source::Gguf(_), _) => {
                "memory-mapped; 64-byte aligned f32 tensors read in place, the others converted once at load"
            }
            (_, Placement::ZeroCopy) => "memory-mapped in place (zero-copy)",
            (_, Placement::Realigned) => "copied once into 64-byte aligned memory",
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
        let Source::Llama2c(l) = &self.source else {
            return None;
        };
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
        match &self.source {
            Source::Llama2c(l) => {
                self.weights_with(l, &|m, layer, layers| self.matrix(m, layer, layers))
            }
            Source::Gguf(g) => self.gguf_weights(g),
        }
    }

    /// A GGUF model's weights, as the views the forward pass takes.
    fn gguf_weights<'s>(&'s self, g: &'s GgufModel) -> Weights<'s> {
        let bytes = self.bytes();
        let vector = |t: &'s Tensor| t.f32s(bytes).expect("norms are f32 (checked at load)");
        let matrix = |t: &'s Tensor| -> MatRef<'s> {
            if let Some(w) = t.f32s(bytes) {
                MatRef::F32(w)
            } else if let Some(w) = t.q8() {
                MatRef::Q8(w)
            } else {
                MatRef::Q4(t.q4().expect("a converted tensor is f32, Q8_0 or Q4_0"))
            }
        };
        Weights {
            token_embedding: matrix(&g.token_embedding),
            rms_final: vector(&g.rms_final),
            wcls: matrix(g.output.as_ref().unwrap_or(&g.token_embedding)),
            layers: g
                .layers
                .iter()
                .map(|l| LayerWeights {
                    rms_att: vector(&l.rms_att),
                    wq: matrix(&l.wq),
                    wk: matrix(&l.wk),
                    wv: matrix(&l.wv),
                    wo: matrix(&l.wo),
                    rms_ffn: vector(&l.rms_ffn),
                    w1: matrix(&l.w1),
                    w2: matrix(&l.w2),
                    w3: matrix(&l.w3),
                })
                .collect(),
        }
    }

    /// The same views, except that the int8 matrices with a generated kernel (a shape in
    /// `generated::Q8_SHAPES` / `Q4_SHAPES` at the compiled group size) are tiled copies for
    /// those kernels. The copies are made once, on the first call (about one pass over the
    /// weights), and kept with the model; the token embedding stays as stored because it is
    /// read one row at a time. For a model of another shape than the compiled one this is
    /// [`Model::weights`].
    pub fn tiled_weights(&self) -> Weights<'_> {
        let plain = self.weights();
        if !self.config().same_shape(&super::compiled_config()) {
            return plain;
        }
        let tiled = self.tiled.get_or_init(|| self.tile(&plain));
        let swap = |m| tiled.swap(m);
        // The token embedding stays as stored: it is read one row at a time.
        Weights {
            token_embedding: plain.token_embedding,
            rms_final: plain.rms_final,
            wcls: swap(plain.wcls),
            layers: plain
                .layers
                .iter()
                .map(|l| LayerWeights {
                    wq: swap(l.wq),
                    wk: swap(l.wk),
                    wv: swap(l.wv),
                    wo: swap(l.wo),
                    w1: swap(l.w1),
                    w2: swap(l.w2),
                    w3: swap(l.w3),
                    ..*l
                })
                .collect(),
        }
    }

    /// Tiles every int8 matrix of `w` whose shape and group have a generated kernel.
    fn tile(&self, w: &Weights) -> Tiled {
        let c = self.config();
        let mut out = Tiled::default();
        let mut add = |m: MatRef, cols: usize| {
            let (q4, group, rows) = match m {
                MatRef::Q8(w) => (false, w.group, w.q.len() / cols),
                MatRef::Q4(w) => (true, w.group, 2 * w.q.len() / cols),
                _ => return,
            };
            let has_kernel = if q4 {
                group == generated::Q4_GROUP && generated::Q4_SHAPES.contains(&(rows, cols))
            } else {
                group == generated::Q8_GROUP && generated::Q8_SHAPES.contains(&(rows, cols))
            };
            let key = m.data_address();
            if !has_kernel || out.matrices.contains_key(&key) {
                return;
            }
            let (tq, ts) = match m {
                MatRef::Q8(w) => {
                    let mut q = AlignedBytes::zeros(w.q.len());
                    let mut s = AlignedVec::zeros(w.scales.len());
                    tiled::tile_q8(w.q, w.scales, cols, group, q.as_i8_mut(), &mut s);
                    (q, s)
                }
                MatRef::Q4(w) => {
                    let mut q = AlignedBytes::zeros(w.q.len());
                    let mut s = AlignedVec::zeros(w.scales.len());
                    tiled::tile_q4(w.q, w.scales, cols, group, &mut q, &mut s);
                    (q, s)
                }
                _ => unreachable!("only int8 matrices are tiled"),
            };
            out.matrices.insert(key, (tq, ts));
        };
        for l in &w.layers {
            for m in [l.wq, l.wk, l.wv, l.wo, l.w1, l.w3] {
                add(m, c.dim);
            }
            add(l.w2, c.hidden_dim);
        }
        add(w.wcls, c.dim);
        out
    }

    /// Builds [`Weights`] with `matrix(span, layer, layers)` for every matrix (the classifier
    /// is one layer of one).
    fn weights_with<'s>(
        &'s self,
        l: &'s CheckpointLayout,
        matrix: &dyn Fn(&'s MatrixSpan, usize, usize) -> MatRef<'s>,
    ) -> Weights<'s> {
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
