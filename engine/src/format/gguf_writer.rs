//! Writing an f32 llama2.c model as a llama GGUF file (`baremetal synth --format gguf`): the
//! metadata llama.cpp reads, the tensors under llama.cpp's names, as F32 or quantised the way
//! llama.cpp's reference quantisers do (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`), and
//! optionally a vocabulary copied from another GGUF (as llama.cpp's llama2c converter does).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::gguf::{Gguf, Value, ValueType};
use super::model::Model;
use crate::base::fp16;

/// The tensor type the matrices are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufWeights {
    /// 32-bit floats.
    F32,
    /// Q8_0 blocks of 32 (f16 scale).
    Q8_0,
    /// Q4_0 blocks of 32 (f16 scale, halves in low and high nibbles).
    Q4_0,
}

impl GgufWeights {
    fn type_id(self) -> u32 {
        match self {
            GgufWeights::F32 => 0,
            GgufWeights::Q8_0 => 8,
            GgufWeights::Q4_0 => 2,
        }
    }

    /// llama.cpp's `general.file_type` for the whole file.
    fn file_type(self) -> u32 {
        match self {
            GgufWeights::F32 => 0,
            GgufWeights::Q8_0 => 7,
            GgufWeights::Q4_0 => 2,
        }
    }
}

const ALIGNMENT: usize = 32;

/// One Q8_0 block as llama.cpp's reference quantiser writes it: `d = max|x| / 127`,
/// `q = round(x / d)` (halves away from zero), `d` stored as f16.
fn q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&fp16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// One Q4_0 block as llama.cpp's reference quantiser writes it: `d = max / -8` with `max` the
/// value of largest magnitude (sign kept), `q = min(15, trunc(x / d + 8.5))`; element `j` in
/// the low nibble of byte `j`, element `j + 16` in its high nibble.
fn q4_0_block(x: &[f32], out: &mut Vec<u8>) {
    let max = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&fp16::from_f32(d).to_le_bytes());
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

fn encode_tensor(values: &[f32], ty: GgufWeights) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    match ty {
        GgufWeights::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgufWeights::Q8_0 => values
            .chunks_exact(32)
            .for_each(|b| q8_0_block(b, &mut out)),
        GgufWeights::Q4_0 => values
            .chunks_exact(32)
            .for_each(|b| q4_0_block(b, &mut out)),
    }
    out
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

fn type_id(t: ValueType) -> u32 {
    use ValueType::*;
    match t {
        U8 => 0,
        I8 => 1,
        U16 => 2,
        I16 => 3,
        U32 => 4,
        I32 => 5,
        F32 => 6,
        Bool => 7,
        String => 8,
        Array => 9,
        U64 => 10,
        I64 => 11,
        F64 => 12,
    }
}

/// A value as GGUF stores it (type id, then the value), e.g. to copy it from another file.
fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match *v {
        Value::Int(i, t) => {
            out.extend_from_slice(&type_id(t).to_le_bytes());
            let b = i.to_le_bytes();
            let width = match t {
                ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
                ValueType::U16 | ValueType::I16 => 2,
                ValueType::U32 | ValueType::I32 => 4,
                _ => 8,
            };
            out.extend_from_slice(&b[..width]);
        }
        Value::Float(f, t) => {
            out.extend_from_slice(&type_id(t).to_le_bytes());
            match t {
                ValueType::F32 => out.extend_from_slice(&(f as f32).to_le_bytes()),
                _ => out.extend_from_slice(&f.to_le_bytes()),
            }
        }
        Value::Str(s) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            string(s, out);
        }
        Value::Array(a) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&type_id(a.elem()).to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for e in a.iter() {
                // Elements without their type id: encode, then drop the 4-byte id.
                let mut one = Vec::new();
                encode_value(&e, &mut one);
                out.extend_from_slice(&one[4..]);
            }
        }
    }
}

/// Writes `src` (an f32 llama2.c model) as a llama GGUF at `path`, its matrices (and token
/// embedding) as `weights`, norms F32; with `vocab`'s `tokenizer.*` keys when given. The
/// metadata (rope base and scaling, norm epsilon) comes from `config`, which must have `src`'s
/// shape: a llama2.c file does not store those.
pub fn write_gguf(
    src: &Model,
    config: &model_config::ModelConfig,
    weights: GgufWeights,
    vocab: Option<&Gguf>,
    path: &Path,
) -> std::io::Result<()> {
    let c = config;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if !c.same_shape(src.config()) {
        return Err(bad(format!(
            "the config ({}) does not have the shape of {} ({})",
            c.shape_summary(),
            src.path().display(),
            src.config().shape_summary()
        )));
    }
    if weights != GgufWeights::F32
        && (!c.dim.is_multiple_of(32) || !c.hidden_dim.is_multiple_of(32))
    {
        return Err(bad(format!(
            "{} blocks of 32 need dim and hidden_dim divisible by 32 (dim {}, hidden {})",
            if weights == GgufWeights::Q8_0 {
                "Q8_0"
            } else {
                "Q4_0"
            },
            c.dim,
            c.hidden_dim
        )));
    }
    let f32_of = |name: &str, layer: Option<usize>| {
        src.f32_tensor(name, layer).ok_or_else(|| {
            bad(format!(
                "{} has no f32 tensor {name}: synth writes GGUF from f32 models",
                src.path().display()
            ))
        })
    };
    let mut kv = Vec::new();
    let mut n_kv = 0u64;
    let mut put = |key: &str, v: &dyn Fn(&mut Vec<u8>)| {
        string(key.as_bytes(), &mut kv);
        v(&mut kv);
        n_kv += 1;
    };
    let u32v = |x: usize| {
        move |o: &mut Vec<u8>| {
            o.extend_from_slice(&4u32.to_le_bytes());
            o.extend_from_slice(&(x as u32).to_le_bytes());
        }
    };
    let f32v = |x: f32| {
        move |o: &mut Vec<u8>| {
            o.extend_from_slice(&6u32.to_le_bytes());
            o.extend_from_slice(&x.to_le_bytes());
        }
    };
    let strv = |s: String| {
        move |o: &mut Vec<u8>| {
            o.extend_from_slice(&8u32.to_le_bytes());
            string(s.as_bytes(), o);
        }
    };
    put("general.architecture", &strv("llama".into()));
    put("general.name", &strv(c.name.clone()));
    put("general.alignment", &u32v(ALIGNMENT));
    put("general.file_type", &u32v(weights.file_type() as usize));
    put("llama.context_length", &u32v(c.seq_len));
    put("llama.embedding_length", &u32v(c.dim));
    put("llama.block_count", &u32v(c.n_layers));
    put("llama.feed_forward_length", &u32v(c.hidden_dim));
    put("llama.attention.head_count", &u32v(c.n_heads));
    put("llama.attention.head_count_kv", &u32v(c.n_kv_heads));
    put("llama.attention.layer_norm_rms_epsilon", &f32v(c.norm_eps));
    put("llama.rope.dimension_count", &u32v(c.head_dim()));
    put("llama.rope.freq_base", &f32v(c.rope_theta));
    if let Some(g) = vocab {
        for (k, v) in g
            .metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
        {
            put(k, &|o: &mut Vec<u8>| encode_value(v, o));
        }
    }

    // Tensors in llama.cpp's order, with their ggml dimensions (innermost first).
    let (d, h, kvd) = (c.dim, c.hidden_dim, c.kv_dim());
    let mut tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)> = Vec::new();
    let mut matrix = |name: String, dims: Vec<usize>, values: &[f32]| {
        tensors.push((
            name,
            dims,
            weights.type_id(),
            encode_tensor(values, weights),
        ));
    };
    matrix(
        "token_embd.weight".into(),
        vec![d, c.vocab_size],
        f32_of("token_embedding", None)?,
    );
    let mut vectors: Vec<(String, Vec<usize>, u32, Vec<u8>)> = Vec::new();
    let mut vector = |name: String, values: &[f32]| {
        vectors.push((
            name,
            vec![values.len()],
            0,
            encode_tensor(values, GgufWeights::F32),
        ));
    };
    vector("output_norm.weight".into(), f32_of("rms_final", None)?);
    if !c.shared_classifier {
        matrix(
            "output.weight".into(),
            vec![d, c.vocab_size],
            f32_of("wcls", None)?,
        );
    }
    for l in 0..c.n_layers {
        let b = |p: &str| format!("blk.{l}.{p}.weight");
        vector(b("attn_norm"), f32_of("rms_att", Some(l))?);
        matrix(b("attn_q"), vec![d, d], f32_of("wq", Some(l))?);
        matrix(b("attn_k"), vec![d, kvd], f32_of("wk", Some(l))?);
        matrix(b("attn_v"), vec![d, kvd], f32_of("wv", Some(l))?);
        matrix(b("attn_output"), vec![d, d], f32_of("wo", Some(l))?);
        vector(b("ffn_norm"), f32_of("rms_ffn", Some(l))?);
        matrix(b("ffn_gate"), vec![d, h], f32_of("w1", Some(l))?);
        matrix(b("ffn_down"), vec![h, d], f32_of("w2", Some(l))?);
        matrix(b("ffn_up"), vec![d, h], f32_of("w3", Some(l))?);
    }
    tensors.extend(vectors);

    let mut head = b"GGUF".to_vec();
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&n_kv.to_le_bytes());
    head.extend_from_slice(&kv);
    let mut offset = 0usize;
    for (name, dims, ty, data) in &tensors {
        string(name.as_bytes(), &mut head);
        head.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for &x in dims {
            head.extend_from_slice(&(x as u64).to_le_bytes());
        }
        head.extend_from_slice(&ty.to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + data.len()).next_multiple_of(ALIGNMENT);
    }
    head.resize(head.len().next_multiple_of(ALIGNMENT), 0);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    out.write_all(&head)?;
    for (_, _, _, data) in &tensors {
        out.write_all(data)?;
        let pad = data.len().next_multiple_of(ALIGNMENT) - data.len();
        out.write_all(&[0u8; ALIGNMENT][..pad])?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ggml::{dequantize, GgmlType};

    #[test]
    fn blocks_round_trip_within_their_step() {
        let mut rng = crate::base::rng::Rng::new(5);
        let x: Vec<f32> = (0..64).map(|_| rng.uniform() * 3.0).collect();
        for (ty, w, steps) in [
            (GgmlType::Q8_0, GgufWeights::Q8_0, 127.0),
            (GgmlType::Q4_0, GgufWeights::Q4_0, 8.0),
        ] {
            let bytes = encode_tensor(&x, w);
            let mut back = vec![0f32; 64];
            dequantize(ty, &bytes, &mut back);
            for (blk, (a, b)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
                let amax = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u - v).abs() <= amax / steps * 1.01,
                        "{ty} block {blk}: {u} vs {v}"
                    );
                }
            }
        }
    }
}
