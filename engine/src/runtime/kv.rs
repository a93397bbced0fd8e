//! The KV cache: the keys and values of every position of every sequence, paged.
//!
//! One pool holds `capacity` positions, stored `(layer, kv head, position, head_dim)` for keys
//! and for values, so each head's rows over a run of positions are contiguous and its attention
//! scores are one small GEMV over them. Positions are handed out in blocks of [`BLOCK`]; a
//! sequence is a list of blocks. A sequence that grows takes the block right after its last one
//! when that is free, so a sequence decoded alone occupies one contiguous run and its attention
//! reads the same spans an unpaged cache would.
//!
//! Blocks are shared by reference count: [`KvCache::fork`] gives a new sequence the same blocks
//! (beam search's hypotheses share their prompt and common prefix) and copies nothing; only when
//! a sequence appends to a last block that someone else also holds is that block's filled part
//! copied first (copy on write: at most `BLOCK - 1` positions). Nothing here allocates once the
//! cache exists: block lists are reserved for the longest sequence the pool can hold.

use std::ops::Range;

use model_config::ModelConfig;
use thiserror::Error;

use crate::base::aligned::{AlignedHalf, AlignedVec};
use crate::kernels::GenericKernels;

/// Positions per block.
pub const BLOCK: usize = 16;

/// How the KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheType {
    /// f32, as llama2.c: the reference tests compare logits with it at 1e-4.
    #[default]
    F32,
    /// IEEE binary16 (round to nearest even): half the attention's memory traffic, at a
    /// small logit difference (docs/PERFORMANCE.md).
    F16,
}

impl KvCacheType {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err("the KV cache type must be f32 or f16".into()),
        }
    }
}

/// Why the cache refused a request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KvError {
    /// No free block is left for the positions asked for.
    #[error("the KV cache is full: its {capacity} positions are all in use")]
    Full {
        /// Positions in the pool.
        capacity: usize,
    },
    /// Every sequence slot is in use.
    #[error("the KV cache already holds its maximum of {max} sequences")]
    TooManySequences {
        /// The maximum.
        max: usize,
    },
}

/// A sequence in the cache. Copyable handle; the cache owns the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(u32);

impl SeqId {
    /// The slot index (for tables indexed by sequence).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug)]
struct Sequence {
    /// Whether the slot holds a live sequence.
    live: bool,
    /// Reserved for the whole pool once, so appending never allocates.
    blocks: Vec<u32>,
    len: usize,
}

#[derive(Debug)]
enum Planes {
    F32 {
        keys: AlignedVec,
        values: AlignedVec,
    },
    F16 {
        keys: AlignedHalf,
        values: AlignedHalf,
    },
}

/// A read-only run of cache rows (keys and values over the same positions of one head).
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    /// f32 rows.
    F32 {
        /// Keys.
        keys: &'a [f32],
        /// Values.
        values: &'a [f32],
    },
    /// Binary16 rows.
    F16 {
        /// Keys.
        keys: &'a [u16],
        /// Values.
        values: &'a [u16],
    },
}

/// The paged KV cache of one model.
#[derive(Debug)]
pub struct KvCache {
    planes: Planes,
    /// Positions in the pool (a multiple of [`BLOCK`]).
    capacity: usize,
    head_dim: usize,
    kv_heads: usize,
    /// References to each block; 0 means free.
    refs: Vec<u32>,
    sequences: Vec<Sequence>,
}

impl KvCache {
    /// A cache for model `c` holding `positions` positions (rounded up to whole blocks) in
    /// at most `max_sequences` sequences.
    pub fn new(c: &ModelConfig, ty: KvCacheType, positions: usize, max_sequences: usize) -> Self {
        let capacity = positions.max(1).div_ceil(BLOCK) * BLOCK;
        let len = c.n_layers * c.n_kv_heads * capacity * c.head_dim();
        let planes = match ty {
            KvCacheType::F32 => Planes::F32 {
                keys: AlignedVec::zeros(len),
                values: AlignedVec::zeros(len),
            },
            KvCacheType::F16 => Planes::F16 {
                keys: AlignedHalf::zeros(len),
                values: AlignedHalf::zeros(len),
            },
        };
        let blocks = capacity / BLOCK;
        Self {
            planes,
            capacity,
            head_dim: c.head_dim(),
            kv_heads: c.n_kv_heads,
            refs: vec![0; blocks],
            sequences: (0..max_sequences.max(1))
                .map(|_| Sequence {
                    live: false,
                    blocks: Vec::with_capacity(blocks),
                    len: 0,
                })
                .collect(),
        }
    }

    /// The element type.
    pub fn kind(&self) -> KvCacheType {
        match self.planes {
            Planes::F32 { .. } => KvCacheType::F32,
            Planes::F16 { .. } => KvCacheType::F16,
        }
    }

    /// Positions in the pool.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions in blocks no sequence holds.
    pub fn free_positions(&self) -> usize {
        self.refs.iter().filter(|&&r| r == 0).count() * BLOCK
    }

    /// A new, empty sequence.
    pub fn create(&mut self) -> Result<SeqId, KvError> {
        let max = self.sequences.len();
        let slot = self
            .sequences
            .iter()
            .position(|s| !s.live)
            .ok_or(KvError::TooManySequences { max })?;
        let s = &mut self.sequences[slot];
        s.live = true;
        s.len = 0;
        s.blocks.clear();
        Ok(SeqId(slot as u32))
    }

    /// The first block of slot `slot`'s home region.
    fn home(&self, slot: usize) -> u32 {
        (slot * (self.refs.len() / self.sequences.len())) as u32
    }

    /// A new sequence holding the same positions as `src` (sharing its blocks: nothing is
    /// copied until one of them appends to a shared partial block).
    pub fn fork(&mut self, src: SeqId) -> Result<SeqId, KvError> {
        let id = self.create()?;
        let (from, to) = (src.index(), id.index());
        debug_assert!(self.sequences[from].live, "fork of a freed sequence");
        // Split borrow: copy the source's block list into the (reserved) new one.
        let (a, b) = if from < to {
            let (lo, hi) = self.sequences.split_at_mut(to);
            (&lo[from], &mut hi[0])
        } else {
            let (lo, hi) = self.sequences.split_at_mut(from);
            (&hi[0], &mut lo[to])
        };
        b.blocks.extend_from_slice(&a.blocks);
        b.len = a.len;
        for &block in &a.blocks {
            self.refs[block as usize] += 1;
        }
        Ok(id)
    }

    /// Drops a sequence, releasing the blocks no other sequence holds.
    pub fn free(&mut self, seq: SeqId) {
        self.truncate(seq, 0);
        self.sequences[seq.index()].live = false;
    }

    /// Forgets the positions from `len` on (a rolled-back turn, a reset).
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        let s = &mut self.sequences[seq.index()];
        if len >= s.len {
            return;
        }
        let keep = len.div_ceil(BLOCK);
        for &block in &s.blocks[keep..] {
            self.refs[block as usize] -= 1;
        }
        s.blocks.truncate(keep);
        s.len = len;
    }

    /// Positions the sequence holds.
    pub fn len(&self, seq: SeqId) -> usize {
        self.sequences[seq.index()].len
    }

    /// Whether the sequence holds no position.
    pub fn is_empty(&self, seq: SeqId) -> bool {
        self.len(seq) == 0
    }

    /// Makes room for `n` more positions of `seq` and claims them (its length grows by `n`):
    /// new blocks as needed, and a private copy of its last block first if that block is
    /// shared and partly filled. All or nothing: on `Full` the sequence is unchanged.
    pub fn append(&mut self, seq: SeqId, n: usize) -> Result<(), KvError> {
        let (len, held) = {
            let s = &self.sequences[seq.index()];
            (s.len, s.blocks.len())
        };
        let needed = (len + n).div_ceil(BLOCK) - held;
        let copy = len % BLOCK != 0 && self.refs[self.last_block(seq) as usize] > 1;
        if needed + usize::from(copy) > self.refs.iter().filter(|&&r| r == 0).count() {
            return Err(KvError::Full {
                capacity: self.capacity,
            });
        }
        if copy {
            let old = self.last_block(seq);
            let new = self.take_block(Some(old));
            self.copy_block(old, new, len % BLOCK);
            self.refs[old as usize] -= 1;
            *self.sequences[seq.index()]
                .blocks
                .last_mut()
                .expect("a partial block") = new;
        }
        for _ in 0..needed {
            let after = self.sequences[seq.index()].blocks.last().copied();
            let block = match after {
                Some(last) => self.take_block(Some(last)),
                None => self.take_block_at(self.home(seq.index())),
            };
            self.sequences[seq.index()].blocks.push(block);
        }
        self.sequences[seq.index()].len = len + n;
        Ok(())
    }

    fn last_block(&self, seq: SeqId) -> u32 {
        *self.sequences[seq.index()]
            .blocks
            .last()
            .expect("a non-empty sequence has blocks")
    }

    /// Claims a free block: the one after `after` if free (keeps a sequence contiguous),
    /// else the first free one. The caller has checked that one is free.
    fn take_block(&mut self, after: Option<u32>) -> u32 {
        self.take_block_at(after.map_or(0, |b| b + 1))
    }

    /// Claims block `want` if it is free, else the first free block after it, else the first
    /// free one. The caller has checked that one is free.
    fn take_block_at(&mut self, want: u32) -> u32 {
        let want = (want as usize).min(self.refs.len());
        let block = self.refs[want..]
            .iter()
            .position(|&r| r == 0)
            .map(|i| want + i)
            .or_else(|| self.refs.iter().position(|&r| r == 0))
            .expect("the caller checked for a free block");
        self.refs[block] = 1;
        block as u32
    }

    /// Copies the first `filled` positions of block `from` into block `to`, in every plane.
    fn copy_block(&mut self, from: u32, to: u32, filled: usize) {
        let (cap, hd) = (self.capacity, self.head_dim);
        let planes = self.len_elements() / (cap * hd);
        let (src, dst) = (from as usize * BLOCK * hd, to as usize * BLOCK * hd);
        let n = filled * hd;
        fn copy<T: Copy>(
            v: &mut [T],
            planes: usize,
            stride: usize,
            src: usize,
            dst: usize,
            n: usize,
        ) {
            for p in 0..planes {
                let base = p * stride;
                v.copy_within(base + src..base + src + n, base + dst);
            }
        }
        match &mut self.planes {
            Planes::F32 { keys, values } => {
                copy(keys, planes, cap * hd, src, dst, n);
                copy(values, planes, cap * hd, src, dst, n);
            }
            Planes::F16 { keys, values } => {
                copy(keys, planes, cap * hd, src, dst, n);
                copy(values, planes, cap * hd, src, dst, n);
            }
        }
    }

    fn len_elements(&self) -> usize {
        match &self.planes {
            Planes::F32 { keys, .. } => keys.len(),
            Planes::F16 { keys, .. } => keys.len(),
        }
    }

    /// Where position `pos` of `seq` lives in the pool.
    #[inline]
    pub fn slot(&self, seq: SeqId, pos: usize) -> usize {
        let s = &self.sequences[seq.index()];
        debug_assert!(pos < s.len, "position {pos} of a sequence of {}", s.len);
        s.blocks[pos / BLOCK] as usize * BLOCK + pos % BLOCK
    }

    /// Stores the keys `k` and values `v` (`kv_dim` each) of one position at pool slot `slot`
    /// of layer `layer` (rounded to binary16 for an f16 cache).
    pub fn store(
        &mut self,
        kernels: &GenericKernels,
        layer: usize,
        slot: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let (hd, cap) = (self.head_dim, self.capacity);
        for h in 0..self.kv_heads {
            let at = ((layer * self.kv_heads + h) * cap + slot) * hd;
            let (k, v) = (&k[h * hd..(h + 1) * hd], &v[h * hd..(h + 1) * hd]);
            match &mut self.planes {
                Planes::F32 { keys, values } => {
                    keys[at..at + hd].copy_from_slice(k);
                    values[at..at + hd].copy_from_slice(v);
                }
                Planes::F16 { keys, values } => {
                    kernels.f32_to_f16(&mut keys[at..at + hd], k);
                    kernels.f32_to_f16(&mut values[at..at + hd], v);
                }
            }
        }
    }

    /// The runs of pool slots holding positions `0..len` of `seq`, in position order, each as
    /// long as adjacency allows (one run for a sequence that grew alone).
    pub fn spans(&self, seq: SeqId, len: usize) -> Spans<'_> {
        Spans {
            blocks: &self.sequences[seq.index()].blocks,
            next: 0,
            len,
        }
    }

    /// Head `head` of layer `layer`'s keys and values over pool slots `slots`.
    #[inline]
    pub fn rows(&self, layer: usize, head: usize, slots: Range<usize>) -> KvRows<'_> {
        let hd = self.head_dim;
        let base = (layer * self.kv_heads + head) * self.capacity;
        let r = (base + slots.start) * hd..(base + slots.end) * hd;
        match &self.planes {
            Planes::F32 { keys, values } => KvRows::F32 {
                keys: &keys[r.clone()],
                values: &values[r],
            },
            Planes::F16 { keys, values } => KvRows::F16 {
                keys: &keys[r.clone()],
                values: &values[r],
            },
        }
    }
}

/// Iterator over the contiguous runs of pool slots of a sequence's first `len` positions.
#[derive(Debug, Clone)]
pub struct Spans<'a> {
    blocks: &'a [u32],
    /// The next position to cover.
    next: usize,
    len: usize,
}

impl Iterator for Spans<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.next >= self.len {
            return None;
        }
        let first = self.next / BLOCK;
        let mut last = first;
        while (last + 1) * BLOCK < self.len && self.blocks[last + 1] == self.blocks[last] + 1 {
            last += 1;
        }
        let start = self.blocks[first] as usize * BLOCK + self.next % BLOCK;
        let end_pos = ((last + 1) * BLOCK).min(self.len);
        let end = self.blocks[last] as usize * BLOCK + (end_pos - last * BLOCK);
        self.next = end_pos;
        Some(start..end)
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // a sequence's spans, written as lists
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        let mut c = model_config::preset("stories260k").unwrap();
        c.n_layers = 2;
        c
    }

    /// Every position's pool slot, via the spans.
    fn slots(kv: &KvCache, seq: SeqId) -> Vec<usize> {
        kv.spans(seq, kv.len(seq)).flatten().collect()
    }

    #[test]
    fn a_sequence_alone_is_one_contiguous_run() {
        let mut kv = KvCache::new(&cfg(), KvCacheType::F32, 100, 2);
        assert_eq!(kv.capacity(), 112);
        let s = kv.create().unwrap();
        kv.append(s, 37).unwrap();
        kv.append(s, 1).unwrap();
        assert_eq!(kv.spans(s, 38).collect::<Vec<_>>(), [0..38]);
        assert_eq!(kv.spans(s, 20).collect::<Vec<_>>(), [0..20]);
        assert_eq!((kv.slot(s, 0), kv.slot(s, 37)), (0, 37));
        assert_eq!(kv.free_positions(), 112 - 48);
        assert_eq!(
            kv.append(s, 112 - 38 + 1),
            Err(KvError::Full { capacity: 112 })
        );
        assert_eq!(kv.len(s), 38, "a refused append changes nothing");
    }

    #[test]
    fn forks_share_blocks_and_copy_only_a_shared_partial_block_on_write() {
        let c = cfg();
        let mut kv = KvCache::new(&c, KvCacheType::F32, 160, 4);
        let k = GenericKernels::detect();
        let a = kv.create().unwrap();
        kv.append(a, 20).unwrap();
        let row = |p: usize| vec![p as f32; c.kv_dim()];
        for p in 0..20 {
            let slot = kv.slot(a, p);
            kv.store(&k, 1, slot, &row(p), &row(p + 1000));
        }
        let b = kv.fork(a).unwrap();
        assert_eq!(slots(&kv, b), slots(&kv, a));
        assert_eq!(kv.free_positions(), 160 - 32, "a fork copies nothing");
        // b appends into the shared partial block: its 4 filled positions are copied.
        kv.append(b, 1).unwrap();
        let (sa, sb) = (slots(&kv, a), slots(&kv, b));
        assert_eq!(sa[..16], sb[..16], "the full block stays shared");
        assert_ne!(sa[16], sb[16]);
        for p in 16..20 {
            let (ra, rb) = (
                kv.rows(1, 0, sa[p]..sa[p] + 1),
                kv.rows(1, 0, sb[p]..sb[p] + 1),
            );
            match (ra, rb) {
                (
                    KvRows::F32 {
                        keys: ka,
                        values: va,
                    },
                    KvRows::F32 {
                        keys: kb,
                        values: vb,
                    },
                ) => {
                    assert_eq!((ka, va), (kb, vb));
                    assert_eq!(ka[0], p as f32);
                }
                _ => unreachable!(),
            }
        }
        // a still owns its partial block alone now: appending needs no copy.
        let free = kv.free_positions();
        kv.append(a, 1).unwrap();
        assert_eq!(kv.free_positions(), free);
        kv.free(a);
        kv.free(b);
        assert_eq!(kv.free_positions(), 160);
    }

    #[test]
    fn spans_merge_adjacent_blocks_only() {
        // 8 blocks, 3 slots: homes at blocks 0, 2 and 4.
        let mut kv = KvCache::new(&cfg(), KvCacheType::F16, 128, 3);
        let a = kv.create().unwrap();
        let b = kv.create().unwrap();
        kv.append(a, 16).unwrap(); // block 0
        kv.append(b, 16).unwrap(); // block 2 (b's home)
        kv.append(a, 20).unwrap(); // blocks 1 (after a's last), then 3 (2 is b's)
        assert_eq!(kv.spans(a, 36).collect::<Vec<_>>(), [0..32, 48..52]);
        assert_eq!(kv.spans(a, 33).collect::<Vec<_>>(), [0..32, 48..49]);
        assert_eq!(kv.spans(b, 16).collect::<Vec<_>>(), [32..48]);
        kv.truncate(a, 10);
        assert_eq!(kv.spans(a, 10).collect::<Vec<_>>(), [0..10]);
        assert_eq!(kv.free_positions(), 128 - 32);
        assert_eq!(
            (kv.create().is_ok(), kv.create()),
            (true, Err(KvError::TooManySequences { max: 3 }))
        );
    }
}
