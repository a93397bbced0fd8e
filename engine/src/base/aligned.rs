//! 64-byte aligned f32 (and byte / int8) buffers: every SIMD load from an activation or the KV
//! cache starts on a cache-line boundary, and the allocation happens once.

use std::ops::{Deref, DerefMut};

/// One cache line of floats; a `Vec` of these is a 64-byte aligned float buffer.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A zero-initialised, 64-byte aligned, fixed-length f32 buffer.
pub struct AlignedVec {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedVec {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }
}

impl Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is repr(C) over 16 f32s, so the lines are `16 * lines.len() >= len`
        // contiguous, initialised f32s.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

impl std::fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec(len {})", self.len)
    }
}

/// A zero-initialised, 64-byte aligned, fixed-length buffer of binary16 bits (the f16 KV
/// cache; see [`crate::base::fp16`]).
pub struct AlignedHalf {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedHalf {
    /// `len` zeros (+0.0 in binary16).
    pub fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(32)],
            len,
        }
    }
}

impl Deref for AlignedHalf {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        // SAFETY: the lines are `64 * lines.len() >= 2 * len` contiguous initialised bytes,
        // aligned for u16, and every bit pattern is a valid u16.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for AlignedHalf {
    fn deref_mut(&mut self) -> &mut [u16] {
        // SAFETY: as in `deref`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

impl std::fmt::Debug for AlignedHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedHalf(len {})", self.len)
    }
}

/// A 64-byte aligned byte buffer for a realigned copy of a checkpoint.
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(64)],
            len,
        }
    }
}

impl AlignedBytes {
    /// The bytes as int8 values (quantised activations).
    pub fn as_i8(&self) -> &[i8] {
        // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast(), self.len) }
    }

    /// The bytes as mutable int8 values.
    pub fn as_i8_mut(&mut self) -> &mut [i8] {
        // SAFETY: as in `as_i8`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr().cast(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes(len {})", self.len)
    }
}

impl Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the lines are `64 * lines.len() >= len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        for n in [1, 15, 16, 17, 1000] {
            let mut v = AlignedVec::zeros(n);
            assert_eq!(v.len(), n);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            v[n - 1] = 3.0;
            assert_eq!(v.iter().sum::<f32>(), 3.0);
            let b = AlignedBytes::zeros(n);
            assert_eq!((b.len(), b.as_ptr() as usize % 64), (n, 0));
        }
    }
}
