//! The transformer forward pass for one token, top to bottom, as in llama2.c's `run.c`.
//!
//! For Q8_0 models (`runq.c`) each GEMV input is quantised once, right before the matrices
//! that read it (`s.xq.input(..)`; a no-op for f32 models), and the weights carry their own
//! format (`MatRef`), so the structure below is the same for both.

use model_config::ModelConfig;

use crate::backend::{Backend, Matrix};
use crate::kernels::GenericKernels;
use crate::model::Weights;
use crate::pool::SyncPtr;
use crate::state::{KvRows, Rope, RunState};

/// Runs token `token` at position `pos` and returns the logits. Allocates nothing.
///
/// # Panics
/// When `token >= vocab_size` or `pos >= seq_len`; callers validate both.
pub fn forward<'s>(
    b: &Backend,
    c: &ModelConfig,
    w: &Weights,
    rope: &Rope,
    s: &'s mut RunState,
    token: usize,
    pos: usize,
) -> &'s mut [f32] {
    assert!(
        token < c.vocab_size && pos < c.seq_len,
        "token {token} / position {pos} out of range"
    );
    let hs = c.head_dim();
    let kv_group = c.kv_group();
    // run.c divides each score by sqrtf(head_size); the softmax folds in this inverse instead,
    // exact for power-of-four head sizes (64 → 1/8) and within an ulp of the argument otherwise.
    let inv_sqrt_hs = 1.0 / (hs as f32).sqrt();

    // The embedding row (dequantised, for Q8_0).
    w.token_embedding.row_into(token, &mut s.x);

    for l in 0..c.n_layers {
        let lw = w.layer(l);
        // Attention.
        b.rmsnorm(&mut s.xb, &s.x, lw.rms_att, c.norm_eps);
        let xb = s.xq.input(&s.xb);
        b.matvec(Matrix::Q, &mut s.q, lw.wq, xb);
        b.matvec(Matrix::K, &mut s.k, lw.wk, xb);
        b.matvec(Matrix::V, &mut s.v, lw.wv, xb);
        rope.rotate(&mut s.q, pos);
        rope.rotate(&mut s.k, pos);

        // The cache is (layer, kv head, position, head_dim): store this position per head.
        // An f16 cache rounds the rows as they are stored.
        let kernels = b.attention_kernels();
        let layer = l * c.n_kv_heads * c.seq_len * hs;
        let head_span = c.seq_len * hs;
        for kh in 0..c.n_kv_heads {
            let at = layer + kh * head_span + pos * hs;
            let (k, v) = (&s.k[kh * hs..(kh + 1) * hs], &s.v[kh * hs..(kh + 1) * hs]);
            s.kv.store(kernels, at, k, v);
        }
        let kv = s.kv.rows(layer..layer + c.n_kv_heads * head_span);
        let (q, att, out) = (
            &s.q[..],
            SyncPtr(s.att.as_mut_ptr()),
            SyncPtr(s.xb.as_mut_ptr()),
        );
        b.parallel(c.n_heads, &|heads| {
            for h in heads {
                // SAFETY: head `h` owns scores `h*seq_len..` and outputs `h*hs..`; heads are
                // split disjointly across threads and the buffers outlive the call.
                let att = unsafe {
                    std::slice::from_raw_parts_mut(att.get().add(h * c.seq_len), pos + 1)
                };
                let out = unsafe { std::slice::from_raw_parts_mut(out.get().add(h * hs), hs) };
                let head = (h / kv_group) * head_span;
                attend(
                    kernels,
                    &q[h * hs..(h + 1) * hs],
                    kv.slice(head..head + (pos + 1) * hs),
                    inv_sqrt_hs,
                    att,
                    out,
                );
            }
        });
        let heads_out = s.xq.input(&s.xb);
        b.matvec(Matrix::O, &mut s.xb2, lw.wo, heads_out);
        add(&mut s.x, &s.xb2);

        // Feed-forward: w2(silu(w1·x) * w3·x).
        b.rmsnorm(&mut s.xb, &s.x, lw.rms_ffn, c.norm_eps);
        let xb = s.xq.input(&s.xb);
        b.matvec(Matrix::W1, &mut s.hb, lw.w1, xb);
        b.matvec(Matrix::W3, &mut s.hb2, lw.w3, xb);
        for (g, &u) in s.hb.iter_mut().zip(s.hb2.iter()) {
            *g = *g * (1.0 / (1.0 + (-*g).exp())) * u;
        }
        let hb = s.xq.input(&s.hb);
        b.matvec(Matrix::W2, &mut s.xb, lw.w2, hb);
        add(&mut s.x, &s.xb);
    }

    b.rmsnorm(&mut s.xb, &s.x, w.rms_final, c.norm_eps);
    let xb = s.xq.input(&s.xb);
    b.matvec(Matrix::Classifier, &mut s.logits, w.wcls, xb);
    &mut s.logits
}

/// One head's attention over positions `0..=pos`: scores, softmax, weighted sum of values.
/// `kv` holds this head's `(pos + 1, head_dim)` key and value rows, contiguous.
fn attend(
    kernels: &GenericKernels,
    q: &[f32],
    kv: KvRows,
    inv_sqrt_hs: f32,
    att: &mut [f32],
    out: &mut [f32],
) {
    // The scores are a GEMV: one row per position, head_dim columns.
    match kv {
        KvRows::F32 { keys, .. } => kernels.matmul(att, keys, q),
        KvRows::F16 { keys, .. } => kernels.matmul_f16(att, keys, q),
    }
    kernels.softmax(att, inv_sqrt_hs);
    match kv {
        KvRows::F32 { values, .. } => kernels.weighted_sum(out, att, values),
        KvRows::F16 { values, .. } => kernels.weighted_sum_f16(out, att, values),
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
