//! The GGUF container (versions 2 and 3), read in place from a byte slice (the mapped file):
//! header, metadata key/values of every type, tensor infos, and each tensor's bytes.
//!
//! Every count, length, offset, dimension and type is checked against the bytes that remain and
//! against sane bounds before anything is allocated or sliced, so a damaged or hostile file gets
//! one [`GgufError`] naming what is wrong and where, never a panic, a huge allocation or a read
//! out of bounds. Strings and numeric arrays are borrowed from the file; nothing is copied.
//!
//! Layout (little-endian): `GGUF`, u32 version, u64 tensor count, u64 key/value count, the
//! key/values (key string, u32 type, value), the tensor infos (name string, u32 dimension count,
//! u64 per dimension, u32 ggml type, u64 offset), padding to `general.alignment` (default 32),
//! then the tensor data, each tensor at its offset from there. A string is a u64 length and that
//! many bytes; an array is a u32 element type, a u64 count and the elements.

use std::collections::HashSet;
use std::fmt;

use thiserror::Error;

use super::ggml::{GgmlType, UnknownType};

/// GGUF's alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The longest tensor name llama.cpp accepts (`GGML_MAX_NAME`, with its NUL).
const MAX_NAME: usize = 64;
/// The most dimensions a tensor has.
const MAX_DIMS: usize = 4;
/// How deep arrays of arrays may nest.
const MAX_DEPTH: usize = 3;
/// The largest alignment accepted (a page is the most any writer uses).
const MAX_ALIGNMENT: usize = 1 << 16;

/// Why a GGUF file could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: it starts with {0:02x?}, not \"GGUF\"")]
    Magic([u8; 4]),
    /// A version this reader does not know.
    #[error("GGUF version {0} is not supported (versions 2 and 3 are)")]
    Version(u32),
    /// The file ends before a field.
    #[error("the file ends at byte {at} inside {what}: it is truncated or damaged")]
    Truncated {
        /// Where the missing bytes should start.
        at: usize,
        /// The field.
        what: String,
    },
    /// A count or length is larger than the bytes left could hold.
    #[error("{what} at byte {at} claims {count} entries, more than the {left} bytes left can hold: the file is damaged")]
    Count {
        /// The field.
        what: String,
        /// Where it is.
        at: usize,
        /// The count claimed.
        count: u64,
        /// Bytes left in the file.
        left: usize,
    },
    /// A key or name is not UTF-8.
    #[error("{what} at byte {at} is not valid UTF-8: the file is damaged")]
    Utf8 {
        /// The field.
        what: String,
        /// Where it is.
        at: usize,
    },
    /// A metadata value type id that GGUF does not define.
    #[error(
        "metadata key `{key}` has value type {ty}, which GGUF does not define: the file is damaged"
    )]
    ValueType {
        /// The key.
        key: String,
        /// The type id.
        ty: u32,
    },
    /// Arrays nested deeper than any writer makes them.
    #[error("metadata key `{key}` nests arrays more than {MAX_DEPTH} deep")]
    Depth {
        /// The key.
        key: String,
    },
    /// A key appears twice.
    #[error("metadata key `{0}` appears twice")]
    DuplicateKey(String),
    /// A tensor name appears twice.
    #[error("tensor `{0}` appears twice")]
    DuplicateTensor(String),
    /// A tensor's shape is unusable.
    #[error("tensor `{name}` has an unusable shape {dims:?}: {why}")]
    Shape {
        /// The tensor.
        name: String,
        /// Its dimensions as stored.
        dims: Vec<u64>,
        /// What is wrong.
        why: String,
    },
    /// A tensor type id that ggml does not define.
    #[error("tensor `{name}` has type id {id}, which ggml does not define")]
    TensorType {
        /// The tensor.
        name: String,
        /// The type id.
        id: u32,
    },
    /// A tensor's data lies outside the file or off the alignment.
    #[error("tensor `{name}`: its {bytes} bytes at offset {offset} {why}")]
    Data {
        /// The tensor.
        name: String,
        /// Its offset from the start of the data section.
        offset: u64,
        /// Its size.
        bytes: u64,
        /// What is wrong.
        why: String,
    },
    /// `general.alignment` is not a usable power of two.
    #[error("general.alignment is {0}; it must be a power of two no larger than {MAX_ALIGNMENT}")]
    Alignment(u64),
    /// A metadata value has another type than the key needs.
    #[error("metadata key `{key}` is {found}, not {wanted}")]
    WrongType {
        /// The key.
        key: String,
        /// What the reader needed.
        wanted: &'static str,
        /// What the file has.
        found: &'static str,
    },
}

/// A metadata value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// u8
    U8,
    /// i8
    I8,
    /// u16
    U16,
    /// i16
    I16,
    /// u32
    U32,
    /// i32
    I32,
    /// f32
    F32,
    /// bool (one byte)
    Bool,
    /// string
    String,
    /// array
    Array,
    /// u64
    U64,
    /// i64
    I64,
    /// f64
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes of one value of a fixed-size type; the least a string or array takes otherwise.
    fn min_size(self) -> usize {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    fn fixed(self) -> bool {
        !matches!(self, ValueType::String | ValueType::Array)
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "a string",
            Array => "an array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata value, borrowed from the file.
#[derive(Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// An unsigned or signed integer of any width, or a bool, widened.
    Int(i128, ValueType),
    /// f32 or f64, widened.
    Float(f64, ValueType),
    /// A string's bytes (GGUF says UTF-8; [`Value::as_str`] checks).
    Str(&'a [u8]),
    /// An array.
    Array(Array<'a>),
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v, _) => write!(f, "{v}"),
            Value::Float(v, _) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{:?}", String::from_utf8_lossy(s)),
            Value::Array(a) => write!(f, "[{} × {}]", a.len(), a.elem.name()),
        }
    }
}

impl<'a> Value<'a> {
    /// The value's type, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_, t) | Value::Float(_, t) => t.name(),
            Value::Str(_) => "a string",
            Value::Array(_) => "an array",
        }
    }

    /// An integer value (of any width), if this is one.
    pub fn as_int(&self) -> Option<i128> {
        match *self {
            Value::Int(v, t) if t != ValueType::Bool => Some(v),
            _ => None,
        }
    }

    /// A float value (f32 or f64), if this is one.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            Value::Float(v, _) => Some(v),
            _ => None,
        }
    }

    /// A bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Int(v, ValueType::Bool) => Some(v != 0),
            _ => None,
        }
    }

    /// A UTF-8 string, if this is one.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    /// An array, if this is one.
    pub fn as_array(&self) -> Option<Array<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// An array value: its element type and its elements' bytes, decoded on demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Array<'a> {
    elem: ValueType,
    len: usize,
    bytes: &'a [u8],
}

impl<'a> Array<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element type.
    pub fn elem(&self) -> ValueType {
        self.elem
    }

    /// Every element, in order. The array was checked when the file was read, so decoding
    /// cannot fail.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let mut r = Reader {
            bytes: self.bytes,
            at: 0,
        };
        let elem = self.elem;
        (0..self.len).map(move |_| {
            r.value(elem, "", 1)
                .expect("array elements were checked when the file was read")
        })
    }

    /// The elements as strings' bytes, if this is an array of strings.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a [u8]> + 'a> {
        (self.elem == ValueType::String).then(|| {
            self.iter().map(|v| match v {
                Value::Str(s) => s,
                _ => unreachable!("an array of strings"),
            })
        })
    }

    /// The elements as f32, if this is an array of f32.
    pub fn f32s(&self) -> Option<impl Iterator<Item = f32> + 'a> {
        (self.elem == ValueType::F32).then(|| {
            self.bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("four bytes")))
        })
    }

    /// The elements as integers, if this is an array of integers of any width.
    pub fn ints(&self) -> Option<impl Iterator<Item = i128> + 'a> {
        let int = !matches!(
            self.elem,
            ValueType::F32
                | ValueType::F64
                | ValueType::Bool
                | ValueType::String
                | ValueType::Array
        );
        int.then(|| self.iter().map(|v| v.as_int().expect("an integer array")))
    }
}

/// One tensor's description and place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo<'a> {
    /// The name, e.g. `blk.0.attn_q.weight`.
    pub name: &'a str,
    /// Dimensions, innermost (contiguous) first, as ggml counts them: a matrix of `rows`
    /// rows of `cols` values is `[cols, rows]`.
    pub dims: Vec<usize>,
    /// The element type.
    pub ty: GgmlType,
    /// The tensor's bytes in the file: `start..end` from the file's first byte.
    pub range: std::ops::Range<usize>,
}

impl TensorInfo<'_> {
    /// Number of values.
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// `(rows, cols)` of a matrix (one row per outer index); a vector is one row.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1);
        (self.elements() / cols.max(1), cols)
    }
}

/// A parsed GGUF file, borrowing the bytes it was read from.
#[derive(Debug)]
pub struct Gguf<'a> {
    /// The format version (2 or 3).
    pub version: u32,
    /// `general.alignment`, or 32.
    pub alignment: usize,
    /// Where the tensor data starts.
    pub data_offset: usize,
    metadata: Vec<(&'a str, Value<'a>)>,
    tensors: Vec<TensorInfo<'a>>,
    bytes: &'a [u8],
}

/// A cursor over the file that checks every read.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated {
                at: self.at,
                what: what(),
            });
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("four bytes")))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("eight bytes")))
    }

    /// A count of things that each take at least `min` bytes, checked against what is left.
    fn count(&mut self, min: usize, what: &dyn Fn() -> String) -> Result<usize, GgufError> {
        let at = self.at;
        let n = self.u64(what)?;
        if n.saturating_mul(min as u64) > self.left() as u64 {
            return Err(GgufError::Count {
                what: what(),
                at,
                count: n,
                left: self.left(),
            });
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let n = self.count(1, what)?;
        self.take(n, what)
    }

    fn utf8(&mut self, what: &dyn Fn() -> String) -> Result<&'a str, GgufError> {
        let at = self.at;
        let s = self.string(what)?;
        std::str::from_utf8(s).map_err(|_| GgufError::Utf8 { what: what(), at })
    }

    /// One value of type `ty` for key `key` (arrays nest at most `MAX_DEPTH` deep).
    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value<'a>, GgufError> {
        let what = || format!("the value of `{key}`");
        let fixed = |r: &mut Self, n: usize| r.take(n, &what);
        Ok(match ty {
            ValueType::U8 => Value::Int(fixed(self, 1)?[0] as i128, ty),
            ValueType::I8 => Value::Int(fixed(self, 1)?[0] as i8 as i128, ty),
            ValueType::Bool => Value::Int((fixed(self, 1)?[0] != 0) as i128, ty),
            ValueType::U16 => Value::Int(
                u16::from_le_bytes(fixed(self, 2)?.try_into().expect("2")) as i128,
                ty,
            ),
            ValueType::I16 => Value::Int(
                i16::from_le_bytes(fixed(self, 2)?.try_into().expect("2")) as i128,
                ty,
            ),
            ValueType::U32 => Value::Int(
                u32::from_le_bytes(fixed(self, 4)?.try_into().expect("4")) as i128,
                ty,
            ),
            ValueType::I32 => Value::Int(
                i32::from_le_bytes(fixed(self, 4)?.try_into().expect("4")) as i128,
                ty,
            ),
            ValueType::U64 => Value::Int(
                u64::from_le_bytes(fixed(self, 8)?.try_into().expect("8")) as i128,
                ty,
            ),
            ValueType::I64 => Value::Int(
                i64::from_le_bytes(fixed(self, 8)?.try_into().expect("8")) as i128,
                ty,
            ),
            ValueType::F32 => Value::Float(
                f32::from_le_bytes(fixed(self, 4)?.try_into().expect("4")) as f64,
                ty,
            ),
            ValueType::F64 => Value::Float(
                f64::from_le_bytes(fixed(self, 8)?.try_into().expect("8")),
                ty,
            ),
            ValueType::String => Value::Str(self.string(&what)?),
            ValueType::Array => {
                if depth > MAX_DEPTH {
                    return Err(GgufError::Depth {
                        key: key.to_string(),
                    });
                }
                let elem_id = self.u32(&what)?;
                let elem = ValueType::from_id(elem_id).ok_or_else(|| GgufError::ValueType {
                    key: key.to_string(),
                    ty: elem_id,
                })?;
                let len = self.count(elem.min_size(), &|| format!("the array `{key}`"))?;
                let start = self.at;
                if elem.fixed() {
                    self.take(len * elem.min_size(), &what)?;
                } else {
                    for _ in 0..len {
                        self.value(elem, key, depth + 1)?;
                    }
                }
                Value::Array(Array {
                    elem,
                    len,
                    bytes: &self.bytes[start..self.at],
                })
            }
        })
    }
}

impl<'a> Gguf<'a> {
    /// Reads and checks the whole header (metadata and tensor infos) of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut r = Reader { bytes, at: 0 };
        let magic = r.take(4, &|| "the magic".into())?;
        if magic != b"GGUF" {
            return Err(GgufError::Magic(magic.try_into().expect("four bytes")));
        }
        let version = r.u32(&|| "the version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        // A tensor info takes at least 8 (name) + 4 + 8 + 4 + 8 bytes; a key/value 8 + 4 + 1.
        let n_tensors = {
            let at = r.at;
            let n = r.u64(&|| "the tensor count".into())?;
            (n, at)
        };
        let n_kv = r.count(13, &|| "the metadata count".into())?;
        let mut metadata: Vec<(&str, Value)> = Vec::with_capacity(n_kv.min(1 << 16));
        let mut keys = HashSet::new();
        for i in 0..n_kv {
            let key = r.utf8(&|| format!("metadata key {i}"))?;
            if !keys.insert(key) {
                return Err(GgufError::DuplicateKey(key.to_string()));
            }
            let ty_id = r.u32(&|| format!("the type of `{key}`"))?;
            let ty = ValueType::from_id(ty_id).ok_or_else(|| GgufError::ValueType {
                key: key.to_string(),
                ty: ty_id,
            })?;
            let v = r.value(ty, key, 1)?;
            metadata.push((key, v));
        }
        let (n, at) = n_tensors;
        if n.saturating_mul(32) > r.left() as u64 {
            return Err(GgufError::Count {
                what: "the tensor count".into(),
                at,
                count: n,
                left: r.left(),
            });
        }
        let n_tensors = n as usize;
        let alignment = match metadata.iter().find(|(k, _)| *k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => {
                let a = v.as_int().ok_or(GgufError::WrongType {
                    key: "general.alignment".into(),
                    wanted: "an integer",
                    found: v.kind(),
                })?;
                if a <= 0 || a as u64 > MAX_ALIGNMENT as u64 || !(a as u64).is_power_of_two() {
                    return Err(GgufError::Alignment(a.clamp(0, u64::MAX as i128) as u64));
                }
                a as usize
            }
        };
        let mut raw = Vec::with_capacity(n_tensors);
        let mut names = HashSet::new();
        for i in 0..n_tensors {
            let name = r.utf8(&|| format!("the name of tensor {i}"))?;
            if name.len() >= MAX_NAME {
                return Err(GgufError::Shape {
                    name: name.into(),
                    dims: Vec::new(),
                    why: format!("its name is longer than {} bytes", MAX_NAME - 1),
                });
            }
            if !names.insert(name) {
                return Err(GgufError::DuplicateTensor(name.to_string()));
            }
            let n_dims = r.u32(&|| format!("the dimension count of `{name}`"))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Shape {
                    name: name.into(),
                    dims: Vec::new(),
                    why: format!("{n_dims} dimensions (1 to {MAX_DIMS} are possible)"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims);
            for d in 0..n_dims {
                dims.push(r.u64(&|| format!("dimension {d} of `{name}`"))?);
            }
            let ty_id = r.u32(&|| format!("the type of `{name}`"))?;
            let offset = r.u64(&|| format!("the offset of `{name}`"))?;
            raw.push((name, dims, ty_id, offset));
        }
        let data_offset = r.at.next_multiple_of(alignment);
        if data_offset > bytes.len() && n_tensors > 0 {
            return Err(GgufError::Truncated {
                at: r.at,
                what: "the padding before the tensor data".into(),
            });
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for (name, dims, ty_id, offset) in raw {
            let shape_err = |why: String| GgufError::Shape {
                name: name.into(),
                dims: dims.clone(),
                why,
            };
            if dims.contains(&0) {
                return Err(shape_err("a dimension is 0".into()));
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| shape_err("its size overflows".into()))?;
            let ty = GgmlType::from_id(ty_id).map_err(|UnknownType(id)| GgufError::TensorType {
                name: name.into(),
                id,
            })?;
            let block = ty.block_size() as u64;
            if dims[0] % block != 0 {
                return Err(shape_err(format!(
                    "rows of {} values are not whole blocks of {block} ({})",
                    dims[0],
                    ty.name()
                )));
            }
            // Checked: an F32 tensor of 2^62 values would otherwise wrap to 0 bytes and pass
            // the bounds check below.
            let size = (elements / block)
                .checked_mul(ty.block_bytes() as u64)
                .ok_or_else(|| shape_err("its size in bytes overflows".into()))?;
            let data_err = |why: &str| GgufError::Data {
                name: name.into(),
                offset,
                bytes: size,
                why: why.into(),
            };
            if offset % alignment as u64 != 0 {
                return Err(data_err(&format!("are not aligned to {alignment} bytes")));
            }
            let start = (data_offset as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(s), Some(e)) if e <= bytes.len() as u64 => tensors.push(TensorInfo {
                    name,
                    dims: dims.iter().map(|&d| d as usize).collect(),
                    ty,
                    range: s as usize..e as usize,
                }),
                _ => {
                    return Err(data_err(&format!(
                        "lie past the end of the {}-byte file",
                        bytes.len()
                    )))
                }
            }
        }
        Ok(Self {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            bytes,
        })
    }

    /// Every key/value, in file order.
    pub fn metadata(&self) -> &[(&'a str, Value<'a>)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.metadata
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// An integer value (any width; converters write u32 where the spec says u64), checked to
    /// fit `usize`.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let i = v.as_int().ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            wanted: "an integer",
            found: v.kind(),
        })?;
        usize::try_from(i)
            .map(Some)
            .map_err(|_| GgufError::WrongType {
                key: key.into(),
                wanted: "a non-negative integer",
                found: "a negative or huge integer",
            })
    }

    /// A float value (f32 or f64).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_float()
            .map(|f| Some(f as f32))
            .ok_or_else(|| GgufError::WrongType {
                key: key.into(),
                wanted: "a float",
                found: v.kind(),
            })
    }

    /// A UTF-8 string value.
    pub fn get_str(&self, key: &str) -> Result<Option<&'a str>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_str().map(Some).ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            wanted: "a UTF-8 string",
            found: v.kind(),
        })
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_bool().map(Some).ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            wanted: "a bool",
            found: v.kind(),
        })
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Result<Option<Array<'a>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_array().map(Some).ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            wanted: "an array",
            found: v.kind(),
        })
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's bytes.
    pub fn data(&self, t: &TensorInfo) -> &'a [u8] {
        &self.bytes[t.range.clone()]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A GGUF writer for tests: metadata as (key, type id, value bytes), tensors as (name, dims,
    /// type id, data).
    #[derive(Default)]
    pub(crate) struct Writer {
        pub version: u32,
        pub kv: Vec<(String, u32, Vec<u8>)>,
        pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
        pub alignment: usize,
    }

    pub(crate) fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    impl Writer {
        pub(crate) fn new() -> Self {
            Self {
                version: 3,
                alignment: 32,
                ..Self::default()
            }
        }

        pub(crate) fn kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
            self.kv.push((key.into(), ty, value));
            self
        }

        pub(crate) fn str(self, key: &str, value: &str) -> Self {
            self.kv(key, 8, string(value.as_bytes()))
        }

        pub(crate) fn u32(self, key: &str, value: u32) -> Self {
            self.kv(key, 4, value.to_le_bytes().to_vec())
        }

        pub(crate) fn f32(self, key: &str, value: f32) -> Self {
            self.kv(key, 6, value.to_le_bytes().to_vec())
        }

        pub(crate) fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
            self.tensors.push((name.into(), dims.to_vec(), ty, data));
            self
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
            for (k, ty, v) in &self.kv {
                out.extend(string(k.as_bytes()));
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(v);
            }
            let mut offset = 0u64;
            let mut offsets = Vec::new();
            for (name, dims, ty, data) in &self.tensors {
                out.extend(string(name.as_bytes()));
                out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                offsets.push(offset);
                offset = (offset + data.len() as u64).next_multiple_of(self.alignment as u64);
            }
            out.resize(out.len().next_multiple_of(self.alignment), 0);
            let base = out.len();
            for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
                out.resize(base + off as usize, 0);
                out.extend_from_slice(data);
            }
            out
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn sample() -> Writer {
        let mut arr = 8u32.to_le_bytes().to_vec(); // array of strings
        arr.extend_from_slice(&3u64.to_le_bytes());
        for s in ["a", "bc", "<0x0A>"] {
            arr.extend(string(s.as_bytes()));
        }
        Writer::new()
            .str("general.architecture", "llama")
            .u32("llama.block_count", 2)
            .f32("llama.rope.freq_base", 500000.0)
            .kv("tokenizer.ggml.tokens", 9, arr)
            .kv("flag", 7, vec![1])
            .tensor(
                "a",
                &[4, 2],
                0,
                f32_bytes(&[1., 2., 3., 4., 5., 6., 7., 8.]),
            )
            .tensor("b", &[3], 0, f32_bytes(&[9., 10., 11.]))
    }

    #[test]
    fn reads_metadata_and_tensors_in_place() {
        let bytes = sample().bytes();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!((g.version, g.alignment), (3, 32));
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(g.get_usize("llama.block_count").unwrap(), Some(2));
        assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), Some(500000.0));
        assert_eq!(g.get_bool("flag").unwrap(), Some(true));
        let tokens: Vec<&[u8]> = g
            .get_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .strings()
            .unwrap()
            .collect();
        assert_eq!(tokens, [&b"a"[..], b"bc", b"<0x0A>"]);
        assert!(matches!(
            g.get_usize("general.architecture"),
            Err(GgufError::WrongType { .. })
        ));
        let a = g.tensor("a").unwrap();
        assert_eq!((a.rows_cols(), a.ty), ((2, 4), GgmlType::F32));
        assert_eq!(g.data(a).len(), 32);
        assert_eq!(g.data(a).as_ptr() as usize % 4, 0);
        assert_eq!(
            g.data(a).as_ptr() as usize - bytes.as_ptr() as usize,
            g.data_offset
        );
        let b = g.tensor("b").unwrap();
        assert_eq!(b.range.start - g.data_offset, 32);
        assert_eq!(&g.data(b)[..4], &9f32.to_le_bytes());
    }

    /// Every prefix of a valid file is refused with an error, never a panic.
    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().bytes();
        for n in 0..bytes.len() - 1 {
            // The last tensor's data is needed; cutting into the padding after it is not
            // possible (there is none), so every shorter prefix must fail.
            assert!(Gguf::parse(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn hostile_headers_are_refused_clearly() {
        let good = sample();
        let err = |w: &Writer| Gguf::parse(&w.bytes()).unwrap_err().to_string();
        let mut b = good.bytes();
        b[0] = b'X';
        assert!(Gguf::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("not a GGUF file"));
        let mut w = Writer::new();
        w.version = 1;
        assert!(err(&w).contains("version 1"));
        // Absurd counts: tensor count and metadata count past what the file holds.
        let mut b = good.bytes();
        b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(Gguf::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("tensor count"));
        let mut b = good.bytes();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Gguf::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("metadata count"));
        // An array claiming 2^60 elements.
        let mut arr = 4u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let w = Writer::new().kv("x", 9, arr);
        assert!(err(&w).contains("the array `x`"), "{}", err(&w));
        // A string longer than the file.
        let mut s = (1u64 << 40).to_le_bytes().to_vec();
        s.extend_from_slice(b"ab");
        let w = Writer::new().kv("s", 8, s);
        assert!(err(&w).contains("`s`"), "{}", err(&w));
        // Unknown value type, arrays nested too deep, duplicate key.
        assert!(err(&Writer::new().kv("t", 99, vec![])).contains("value type 99"));
        let mut nested = Vec::new();
        for _ in 0..5 {
            nested.extend_from_slice(&9u32.to_le_bytes());
            nested.extend_from_slice(&1u64.to_le_bytes());
        }
        nested.extend_from_slice(&4u32.to_le_bytes());
        nested.extend_from_slice(&0u64.to_le_bytes());
        let w = Writer::new().kv("n", 9, nested);
        assert!(err(&w).contains("nests arrays"), "{}", err(&w));
        assert!(err(&Writer::new().u32("k", 1).u32("k", 2)).contains("appears twice"));
        // Tensors: five dimensions, a zero dimension, an unknown type, data out of the file,
        // a row that is not whole blocks, a misaligned offset, a duplicate name.
        let t = |dims: &[u64], ty: u32, data: Vec<u8>| Writer::new().tensor("w", dims, ty, data);
        assert!(err(&t(&[1, 1, 1, 1, 1], 0, vec![0; 4])).contains("5 dimensions"));
        assert!(err(&t(&[4, 0], 0, vec![])).contains("dimension is 0"));
        assert!(err(&t(&[4], 77, vec![0; 16])).contains("type id 77"));
        assert!(err(&t(&[4, 1 << 40], 0, vec![0; 16])).contains("past the end"));
        assert!(err(&t(&[48], 8, vec![0; 51])).contains("whole blocks of 32 (Q8_0)"));
        assert!(err(&t(&[1 << 62, 1 << 62], 0, vec![])).contains("overflows"));
        let mut b = t(&[4], 0, vec![0; 16])
            .tensor("v", &[4], 0, vec![0; 16])
            .bytes();
        // Move the second tensor's offset off the alignment: it follows its name (8 + 1 bytes),
        // dimension count (4), one dimension (8) and type (4).
        let name = string(b"v");
        let at = (0..b.len()).find(|&i| b[i..].starts_with(&name)).unwrap() + 9 + 4 + 8 + 4;
        assert_eq!(b[at..at + 8], 32u64.to_le_bytes());
        b[at..at + 8].copy_from_slice(&33u64.to_le_bytes());
        assert!(Gguf::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("not aligned"));
        let w = t(&[4], 0, vec![0; 16]).tensor("w", &[4], 0, vec![0; 16]);
        assert!(err(&w).contains("appears twice"));
        let w = Writer::new().u32("general.alignment", 24);
        assert!(err(&w).contains("power of two"));
    }
}
