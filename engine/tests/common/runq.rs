//! An independent scalar implementation of llama2.c's `runq.c` forward pass, shared by the
//! Q8_0 and Q4_0 tests: each test parses its own file format into a [`RefModel`] (Q4 values
//! unpacked to i8), and this runs it. It shares nothing with the engine.
// The reference keeps runq.c's indexed C loops, so it reads side by side with it.
#![allow(clippy::needless_range_loop)]

/// One quantised tensor: values (i8; Q4 weights unpacked, in [-8, 7]) and one scale per group.
pub struct QT {
    pub q: Vec<i8>,
    pub s: Vec<f32>,
}

/// runq.c `quantize` for activations: the same, with C `round()` (ties away from zero).
pub fn runq_quantize(x: &[f32], gs: usize) -> QT {
    quantize_groups(x, gs, f32::round)
}

/// Groups of `gs`: `scale = max|x| / 127`, `q = round(x / scale)` clamped to ±127 with the
/// given rounding; an all-zero group gets scale 0 and q 0.
pub fn quantize_groups(x: &[f32], gs: usize, round: fn(f32) -> f32) -> QT {
    let mut q = Vec::with_capacity(x.len());
    let mut s = Vec::with_capacity(x.len() / gs);
    for g in x.chunks(gs) {
        let wmax = g.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        let scale = wmax / 127.0;
        s.push(scale);
        for &v in g {
            q.push(if scale == 0.0 {
                0
            } else {
                round(v / scale).clamp(-127.0, 127.0) as i8
            });
        }
    }
    QT { q, s }
}

/// A quantised checkpoint as the reference reads it (Q4 values unpacked to i8).
pub struct RefModel {
    pub dim: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub seq_len: usize,
    pub gs: usize,
    pub rms_att: Vec<f32>,
    pub rms_ffn: Vec<f32>,
    pub rms_final: Vec<f32>,
    pub emb: QT,
    pub wq: Vec<QT>,
    pub wk: Vec<QT>,
    pub wv: Vec<QT>,
    pub wo: Vec<QT>,
    pub w1: Vec<QT>,
    pub w2: Vec<QT>,
    pub w3: Vec<QT>,
    pub wcls: Option<QT>,
}

/// runq.c `matmul`: `xout (d) = W (d, n) · x (n)`, i32 per group, scaled and summed in f32.
pub fn runq_matmul(xout: &mut [f32], x: &QT, w: &QT, n: usize, d: usize, gs: usize) {
    for (i, o) in xout.iter_mut().enumerate().take(d) {
        let mut val = 0.0f32;
        let row = i * n;
        let mut j = 0;
        while j + gs <= n {
            let mut ival = 0i32;
            for k in 0..gs {
                ival += x.q[j + k] as i32 * w.q[row + j + k] as i32;
            }
            val += ival as f32 * w.s[(row + j) / gs] * x.s[j / gs];
            j += gs;
        }
        *o = val;
    }
}

pub fn rmsnorm(o: &mut [f32], x: &[f32], w: &[f32]) {
    let mut ss = 0.0f32;
    for &v in x {
        ss += v * v;
    }
    ss /= x.len() as f32;
    ss += 1e-5;
    ss = 1.0 / ss.sqrt();
    for j in 0..x.len() {
        o[j] = w[j] * (ss * x[j]);
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// runq.c's forward pass in plain scalar code, one token at a time.
pub struct RefRun<'m> {
    pub m: &'m RefModel,
    pub pos: usize,
    pub key_cache: Vec<f32>,
    pub value_cache: Vec<f32>,
}

impl<'m> RefRun<'m> {
    pub fn new(m: &'m RefModel) -> Self {
        let kv_dim = m.dim / m.heads * m.kv_heads;
        let cache = m.layers * m.seq_len * kv_dim;
        Self {
            m,
            pos: 0,
            key_cache: vec![0.0; cache],
            value_cache: vec![0.0; cache],
        }
    }

    /// The logits after feeding `token` at the next position.
    pub fn step(&mut self, token: usize) -> Vec<f32> {
        let (m, pos) = (self.m, self.pos);
        self.pos += 1;
        let (dim, hidden, gs) = (m.dim, m.hidden, m.gs);
        let hs = dim / m.heads;
        let kv_dim = hs * m.kv_heads;
        let kv_mul = m.heads / m.kv_heads;
        let (mut x, mut xb, mut xb2) = (vec![0.0f32; dim], vec![0.0f32; dim], vec![0.0f32; dim]);
        let (mut hb, mut hb2) = (vec![0.0f32; hidden], vec![0.0f32; hidden]);
        let (mut q, mut k, mut v) = (
            vec![0.0f32; dim],
            vec![0.0f32; kv_dim],
            vec![0.0f32; kv_dim],
        );
        let mut logits = vec![0.0f32; m.vocab];
        for i in 0..dim {
            x[i] = m.emb.q[token * dim + i] as f32 * m.emb.s[(token * dim + i) / gs];
        }
        for l in 0..m.layers {
            rmsnorm(&mut xb, &x, &m.rms_att[l * dim..(l + 1) * dim]);
            let xq = runq_quantize(&xb, gs);
            runq_matmul(&mut q, &xq, &m.wq[l], dim, dim, gs);
            runq_matmul(&mut k, &xq, &m.wk[l], dim, kv_dim, gs);
            runq_matmul(&mut v, &xq, &m.wv[l], dim, kv_dim, gs);
            let mut i = 0;
            while i < dim {
                let head_dim = i % hs;
                let freq = 1.0f32 / 10000.0f32.powf(head_dim as f32 / hs as f32);
                let val = pos as f32 * freq;
                let (fcr, fci) = (val.cos(), val.sin());
                let rotn = if i < kv_dim { 2 } else { 1 };
                for r in 0..rotn {
                    let vec = if r == 0 { &mut q } else { &mut k };
                    let (v0, v1) = (vec[i], vec[i + 1]);
                    vec[i] = v0 * fcr - v1 * fci;
                    vec[i + 1] = v0 * fci + v1 * fcr;
                }
                i += 2;
            }
            let loff = l * m.seq_len * kv_dim;
            self.key_cache[loff + pos * kv_dim..loff + (pos + 1) * kv_dim].copy_from_slice(&k);
            self.value_cache[loff + pos * kv_dim..loff + (pos + 1) * kv_dim].copy_from_slice(&v);
            for h in 0..m.heads {
                let qh = &q[h * hs..(h + 1) * hs];
                let mut att = vec![0.0f32; pos + 1];
                for (t, a) in att.iter_mut().enumerate() {
                    let kt = &self.key_cache[loff + t * kv_dim + (h / kv_mul) * hs..][..hs];
                    let mut score = 0.0f32;
                    for i in 0..hs {
                        score += qh[i] * kt[i];
                    }
                    *a = score / (hs as f32).sqrt();
                }
                softmax(&mut att);
                let out = &mut xb[h * hs..(h + 1) * hs];
                out.fill(0.0);
                for (t, &a) in att.iter().enumerate() {
                    let vt = &self.value_cache[loff + t * kv_dim + (h / kv_mul) * hs..][..hs];
                    for i in 0..hs {
                        out[i] += a * vt[i];
                    }
                }
            }
            let xq = runq_quantize(&xb, gs);
            runq_matmul(&mut xb2, &xq, &m.wo[l], dim, dim, gs);
            for i in 0..dim {
                x[i] += xb2[i];
            }
            rmsnorm(&mut xb, &x, &m.rms_ffn[l * dim..(l + 1) * dim]);
            let xq = runq_quantize(&xb, gs);
            runq_matmul(&mut hb, &xq, &m.w1[l], dim, hidden, gs);
            runq_matmul(&mut hb2, &xq, &m.w3[l], dim, hidden, gs);
            for i in 0..hidden {
                let mut val = hb[i];
                val *= 1.0 / (1.0 + (-val).exp());
                val *= hb2[i];
                hb[i] = val;
            }
            let hq = runq_quantize(&hb, gs);
            runq_matmul(&mut xb, &hq, &m.w2[l], hidden, dim, gs);
            for i in 0..dim {
                x[i] += xb[i];
            }
        }
        let xf = x.clone();
        rmsnorm(&mut x, &xf, &m.rms_final);
        let xq = runq_quantize(&x, gs);
        runq_matmul(
            &mut logits,
            &xq,
            m.wcls.as_ref().unwrap_or(&m.emb),
            dim,
            m.vocab,
            gs,
        );
        logits
    }
}

/// First index of the largest value.
pub fn first_argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in v.iter().enumerate() {
        if l > v[best] {
            best = i;
        }
    }
    best
}

/// The reference's greedy ids from BOS and the logits of every position.
pub fn runq_greedy_logits(m: &RefModel, steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut run = RefRun::new(m);
    let (mut ids, mut all) = (Vec::new(), Vec::new());
    let mut token = 1;
    for _ in 0..steps {
        let logits = run.step(token);
        token = first_argmax(&logits);
        ids.push(token as u32);
        all.push(logits);
    }
    (ids, all)
}
