//! A small GGUF writer for tests, written from the format description (not from our reader):
//! magic, u32 version, u64 tensor count, u64 key/value count, key/values, tensor infos,
//! zero padding to the alignment, data.

#![allow(dead_code)]

/// One value to write, with its GGUF type id.
#[derive(Clone, Debug)]
pub enum V {
    U8(u8),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(Vec<u8>),
    /// Element type id and the encoded elements.
    Arr(u32, Vec<V>),
}

impl V {
    pub fn str(s: &str) -> V {
        V::Str(s.as_bytes().to_vec())
    }

    pub fn type_id(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            V::U8(v) => out.push(*v),
            V::U32(v) => out.extend(v.to_le_bytes()),
            V::I32(v) => out.extend(v.to_le_bytes()),
            V::U64(v) => out.extend(v.to_le_bytes()),
            V::F32(v) => out.extend(v.to_le_bytes()),
            V::Bool(v) => out.push(*v as u8),
            V::Str(s) => {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s);
            }
            V::Arr(t, items) => {
                out.extend(t.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.encode(out);
                }
            }
        }
    }
}

/// A tensor to write: name, dims, ggml type id, data bytes.
#[derive(Clone, Debug)]
pub struct T {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

/// Where the pieces of a built file are, for targeted corruption.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Offset of each key/value pair.
    pub kv: Vec<usize>,
    /// Offset of each tensor info.
    pub tensor_info: Vec<usize>,
    /// Offset of each tensor's data-offset field.
    pub tensor_offset_field: Vec<usize>,
    /// Offset of each tensor's n_dims field.
    pub tensor_ndims_field: Vec<usize>,
    /// Offset of each tensor's type field.
    pub tensor_type_field: Vec<usize>,
    /// Start of the data section.
    pub data_start: usize,
}

/// Builds a version-3 file with the default alignment of 32 (or `general.alignment` if given
/// as a U32 key).
pub fn build(kvs: &[(&str, V)], tensors: &[T]) -> (Vec<u8>, Layout) {
    let align = kvs
        .iter()
        .find(|(k, _)| *k == "general.alignment")
        .and_then(|(_, v)| match v {
            V::U32(a) => Some(*a as usize),
            _ => None,
        })
        .unwrap_or(32);
    let mut l = Layout::default();
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        l.kv.push(out.len());
        V::str(k).encode(&mut out);
        out.extend(v.type_id().to_le_bytes());
        v.encode(&mut out);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for t in tensors {
        l.tensor_info.push(out.len());
        V::str(&t.name).encode(&mut out);
        l.tensor_ndims_field.push(out.len());
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        l.tensor_type_field.push(out.len());
        out.extend(t.type_id.to_le_bytes());
        l.tensor_offset_field.push(out.len());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset += t.data.len().div_ceil(align) * align;
    }
    if !tensors.is_empty() {
        while out.len() % align != 0 {
            out.push(0);
        }
    }
    l.data_start = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(l.data_start + off, 0);
        out.extend(&t.data);
    }
    (out, l)
}
