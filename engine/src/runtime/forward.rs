//! The transformer forward pass, top to bottom as in llama2.c's `run.c`, for a batch of token
//! rows at once: a prompt's chunk of consecutive positions, beam search's hypotheses, or a
//! server's sequences, each row at its own position of its own sequence. Every matrix is read
//! once per batch (a GEMM instead of one GEMV per token); everything else runs row by row with
//! the single-token kernels, so a row's result does not depend on what else is in the batch.
//!
//! For Q8_0/Q4_0 models each matrix input is quantised once, right before the matrices that
//! read it (`s.xq.input(..)`; a no-op for f32 models), and the weights carry their own format
//! (`MatRef`), so the structure below is the same for every format.

use model_config::ModelConfig;

use crate::format::model::Weights;
use crate::kernels::GenericKernels;
use crate::runtime::backend::{Backend, Matrix};
use crate::runtime::kv::{KvCache, KvRows, SeqId};
use crate::runtime::pool::SyncPtr;
use crate::runtime::state::{Rope, RunState};

/// One token of a batch: `token` fed at position `pos` of sequence `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The sequence (its cache must already hold position `pos`: [`KvCache::append`]).
    pub seq: SeqId,
    /// The token fed.
    pub token: u32,
    /// Its position in the sequence.
    pub pos: usize,
    /// Whether to compute the next-token logits after this row.
    pub logits: bool,
}

/// Runs `rows` and returns the logits of the rows that ask for them, one `vocab_size` row each
/// in batch order. Every row's keys and values are stored before any attends, so rows of one
/// sequence at consecutive positions see each other causally. Allocates nothing.
///
/// # Panics
/// When there are more rows (or logit rows) than `s` was sized for, or a token or position is
/// out of range; callers validate both.
pub fn forward<'s>(
    b: &Backend,
    c: &ModelConfig,
    w: &Weights,
    rope: &Rope,
    s: &'s mut RunState,
    kv: &mut KvCache,
    rows: &[Row],
) -> &'s mut [f32] {
    let n = rows.len();
    assert!(n <= s.rows, "{n} rows in a batch sized for {}", s.rows);
    let (dim, hidden, kv_dim) = (c.dim, c.hidden_dim, c.kv_dim());
    let kernels = b.attention_kernels();

    // The embedding rows (dequantised, for Q8_0 / Q4_0).
    for (i, r) in rows.iter().enumerate() {
        assert!(
            (r.token as usize) < c.vocab_size,
            "token {} out of range",
            r.token
        );
        w.token_embedding
            .row_into(r.token as usize, &mut s.x[i * dim..(i + 1) * dim]);
    }

    for l in 0..c.n_layers {
        let lw = w.layer(l);
        // Attention: normalise, project, rotate, store every row's key and value, attend.
        for i in 0..n {
            let (xb, x) = (
                &mut s.xb[i * dim..(i + 1) * dim],
                &s.x[i * dim..(i + 1) * dim],
            );
            b.rmsnorm(xb, x, lw.rms_att, c.norm_eps);
        }
        let xb = s.xq.input(&s.xb[..n * dim], n);
        b.matmul(Matrix::Q, &mut s.q[..n * dim], lw.wq, xb);
        b.matmul(Matrix::K, &mut s.k[..n * kv_dim], lw.wk, xb);
        b.matmul(Matrix::V, &mut s.v[..n * kv_dim], lw.wv, xb);
        for (i, r) in rows.iter().enumerate() {
            rope.rotate(&mut s.q[i * dim..(i + 1) * dim], r.pos);
            rope.rotate(&mut s.k[i * kv_dim..(i + 1) * kv_dim], r.pos);
            let (k, v) = (
                &s.k[i * kv_dim..(i + 1) * kv_dim],
                &s.v[i * kv_dim..(i + 1) * kv_dim],
            );
            kv.store(kernels, l, kv.slot(r.seq, r.pos), k, v);
        }
        attention(b, c, kv, l, rows, s);
        let heads_out = s.xq.input(&s.xb[..n * dim], n);
        b.matmul(Matrix::O, &mut s.xb2[..n * dim], lw.wo, heads_out);
        add(&mut s.x[..n * dim], &s.xb2[..n * dim]);

        // Feed-forward: w2(silu(w1·x) * w3·x).
        for i in 0..n {
            let (xb, x) = (
                &mut s.xb[i * dim..(i + 1) * dim],
                &s.x[i * dim..(i + 1) * dim],
            );
            b.rmsnorm(xb, x, lw.rms_ffn, c.norm_eps);
        }
        let xb = s.xq.input(&s.xb[..n * dim], n);
        b.matmul(Matrix::W1, &mut s.hb[..n * hidden], lw.w1, xb);
        b.matmul(Matrix::W3, &mut s.hb2[..n * hidden], lw.w3, xb);
        for (g, &u) in s.hb[..n * hidden].iter_mut().zip(&s.hb2[..n * hidden]) {
            *g = *g * (1.0 / (1.0 + (-*g).exp())) * u;
        }
        let hb = s.xq.input(&s.hb[..n * hidden], n);
        b.matmul(Matrix::W2, &mut s.xb[..n * dim], lw.w2, hb);
        add(&mut s.x[..n * dim], &s.xb[..n * dim]);
    }

    // The classifier, only for the rows that want logits (a prompt: its last).
    let mut m = 0;
    for (i, _) in rows.iter().enumerate().filter(|(_, r)| r.logits) {
        assert!(
            m < s.logit_rows,
            "more logit rows than the {} sized for",
            s.logit_rows
        );
        let (xb, x) = (
            &mut s.xb[m * dim..(m + 1) * dim],
            &s.x[i * dim..(i + 1) * dim],
        );
        b.rmsnorm(xb, x, w.rms_final, c.norm_eps);
        m += 1;
    }
    let vocab = c.vocab_size;
    if m > 0 {
        let xb = s.xq.input(&s.xb[..m * dim], m);
        b.matmul(Matrix::Classifier, &mut s.logits[..m * vocab], w.wcls, xb);
    }
    &mut s.logits[..m * vocab]
}

/// Every row's attention, its heads split across the threads: each (row, head) attends over
/// its own sequence's positions `0..=pos`, into `s.xb`.
fn attention(b: &Backend, c: &ModelConfig, kv: &KvCache, l: usize, rows: &[Row], s: &mut RunState) {
    let (dim, hs, seq_len) = (c.dim, c.head_dim(), c.seq_len);
    let kv_group = c.kv_group();
    // run.c divides each score by sqrtf(head_size); the softmax folds in this inverse instead,
    // exact for power-of-four head sizes (64 → 1/8) and within an ulp of the argument otherwise.
    let inv_sqrt_hs = 1.0 / (hs as f32).sqrt();
    let kernels = b.attention_kernels();
    let q = &s.q[..];
    let (att, scratch, out) = (
        SyncPtr(s.att.as_mut_ptr()),
        SyncPtr(s.head_out.as_mut_ptr()),
        SyncPtr(s.xb.as_mut_ptr()),
    );
    assert!(s.att.len() >= b.threads() * seq_len && s.head_out.len() >= b.threads() * hs);
    b.parallel(rows.len() * c.n_heads, &|share, units| {
        // SAFETY: share `share` alone uses scores `share*seq_len..` and scratch `share*hs..`;
        // unit (i, h) alone writes outputs `i*dim + h*hs..`; units are split disjointly and
        // every buffer outlives the call.
        let att =
            unsafe { std::slice::from_raw_parts_mut(att.get().add(share * seq_len), seq_len) };
        let tmp = unsafe { std::slice::from_raw_parts_mut(scratch.get().add(share * hs), hs) };
        for u in units {
            let (i, h) = (u / c.n_heads, u % c.n_heads);
            let r = rows[i];
            let at = i * dim + h * hs;
            let out = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), hs) };
            let head = Head {
                kv,
                layer: l,
                kv_head: h / kv_group,
                seq: r.seq,
                len: r.pos + 1,
            };
            attend(kernels, &q[at..at + hs], head, inv_sqrt_hs, att, tmp, out);
        }
    });
}

/// Where one head's keys and values are: positions `0..len` of `seq`, kv head `kv_head` of
/// layer `layer`.
struct Head<'a> {
    kv: &'a KvCache,
    layer: usize,
    kv_head: usize,
    seq: SeqId,
    len: usize,
}

/// One head's attention: scores over the cached keys, softmax, weighted sum of the values.
/// The cache hands the positions out as contiguous runs (one, for a sequence that grew alone);
/// each run's scores are a GEMV over its rows, and its values are summed into `out`.
fn attend(
    kernels: &GenericKernels,
    q: &[f32],
    head: Head,
    inv_sqrt_hs: f32,
    att: &mut [f32],
    tmp: &mut [f32],
    out: &mut [f32],
) {
    let Head {
        kv,
        layer,
        kv_head,
        seq,
        len,
    } = head;
    let att = &mut att[..len];
    let mut at = 0;
    for span in kv.spans(seq, len) {
        let scores = &mut att[at..at + span.len()];
        match kv.rows(layer, kv_head, span) {
            KvRows::F32 { keys, .. } => kernels.matmul(scores, keys, q),
            KvRows::F16 { keys, .. } => kernels.matmul_f16(scores, keys, q),
        }
        at += scores.len();
    }
    kernels.softmax(att, inv_sqrt_hs);
    let mut at = 0;
    for (k, span) in kv.spans(seq, len).enumerate() {
        let weights = &att[at..at + span.len()];
        at += weights.len();
        let dst = if k == 0 { &mut *out } else { &mut *tmp };
        match kv.rows(layer, kv_head, span) {
            KvRows::F32 { values, .. } => kernels.weighted_sum(dst, weights, values),
            KvRows::F16 { values, .. } => kernels.weighted_sum_f16(dst, weights, values),
        }
        if k > 0 {
            add(out, tmp);
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
