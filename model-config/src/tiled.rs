//! The tiled int8 layout: how the engine rearranges Q8_0 and Q4_0 matrices once at load so
//! that the generated int8 kernels read each matrix as one sequential stream, and how the
//! quantised input is put in the matching order. The generator (`codegen`) and the engine
//! both follow this module, so the layout is written down once.
//!
//! * **Blocks.** A row is cut into blocks of [`BLOCK`] = 64 values. A Q8_0 chunk is one block
//!   (64 bytes); a Q4_0 chunk is two blocks in 64 bytes: the low nibbles hold the first block,
//!   the high nibbles the second (so unpacking is one AND and one shift, and no deinterleave of
//!   the input is needed).
//! * **Lanes.** Inside a block with `n = 64 / group` groups, the 16 four-byte lanes alternate
//!   between the groups: lane `i` holds four consecutive values of group `i % n`. Every SIMD
//!   width's i32 lanes (16 for AVX-512, 8 for AVX2, 4 for NEON) then see the same repeating
//!   group pattern, so a vector of per-lane scales is one broadcast of `n` floats instead of a
//!   permute. [`block_position`] gives the position of each value.
//! * **Tiles.** Rows go in tiles of [`TILE_ROWS`]; a tile stores chunk 0 of each of its rows,
//!   then chunk 1 of each, and so on, so a kernel that computes the tile's rows together reads
//!   its bytes front to back. Rows past the last full tile are stored one by one (tiles of
//!   one row). A block of rows starting on a tile boundary therefore starts at `row · cols`
//!   bytes (Q8_0), `row · cols / 2` (Q4_0) and `row · cols / group` scales, as untiled.
//! * **Scales** follow the same order: per tile, per chunk, per row, that chunk's groups.
//! * **Values are unsigned with an offset**: Q8_0 bytes hold `q + 128` (`q ^ 0x80`), Q4_0
//!   nibbles `q + 8` (as in baremetal v3). VNNI's `vpdpbusd` multiplies an unsigned by a signed
//!   byte, so the weights are the unsigned side and the input stays as it is; each lane starts
//!   from `-offset · Σ x` over its four values, which the input carries precomputed
//!   ([`input_correction`]), and ends with `Σ q · x`. Without VNNI, kernels turn the byte back
//!   into `q` with one XOR (Q8_0).
//!
//! Only shapes whose rows are whole chunks and whose group is 16, 32 or 64 are tiled
//! ([`q8_tiles`], [`q4_tiles`]); other matrices keep the file's layout and run on the
//! runtime-shape kernels.

use crate::{ModelConfig, WeightFormat, DEFAULT_Q4_GROUP, DEFAULT_Q8_GROUP};

/// Values per block.
pub const BLOCK: usize = 64;
/// Rows per tile: matches the engine's thread-share granularity, so a share never splits
/// a tile.
pub const TILE_ROWS: usize = 4;

/// Group sizes the tiled kernels handle: each block holds whole groups.
pub fn tiled_group(group: usize) -> bool {
    matches!(group, 16 | 32 | 64)
}

/// True when a Q8_0 matrix of `cols` columns with `group` is tiled.
pub fn q8_tiles(cols: usize, group: usize) -> bool {
    tiled_group(group) && cols > 0 && cols.is_multiple_of(BLOCK)
}

/// True when a Q4_0 matrix of `cols` columns with `group` is tiled (chunks of two blocks).
pub fn q4_tiles(cols: usize, group: usize) -> bool {
    tiled_group(group) && cols > 0 && cols.is_multiple_of(2 * BLOCK)
}

/// The largest power of two no larger than `requested` dividing both `dim` and `hidden_dim`
/// (what `baremetal quantize` picks by default), or 0 if none of at least 4 does.
fn fitting_group(cfg: &ModelConfig, requested: usize) -> usize {
    let mut g = requested;
    while g >= 4 {
        if cfg.dim.is_multiple_of(g) && cfg.hidden_dim.is_multiple_of(g) {
            return g;
        }
        g /= 2;
    }
    0
}

/// The (Q8_0, Q4_0) group sizes a model's int8 kernels are generated for: the config's own
/// when its `weight_format` names one, else the group `baremetal quantize` would choose.
pub fn int8_groups(cfg: &ModelConfig) -> (usize, usize) {
    let q8 = match cfg.weight_format {
        WeightFormat::Q8_0 { group_size } | WeightFormat::Mixed { group_size } => group_size,
        _ => fitting_group(cfg, DEFAULT_Q8_GROUP),
    };
    let q4 = match cfg.weight_format {
        WeightFormat::Q4_0 { group_size } | WeightFormat::Mixed { group_size } => group_size,
        _ => fitting_group(cfg, DEFAULT_Q4_GROUP),
    };
    (q8, q4)
}

/// Where value `e` (`< BLOCK`) of a block goes, for groups of `group` values: lane
/// `(e % group) / 4 · n + e / group` (with `n = BLOCK / group`), byte `e % 4` of it.
#[inline]
pub fn block_position(e: usize, group: usize) -> usize {
    let n = BLOCK / group;
    (((e % group) / 4) * n + e / group) * 4 + e % 4
}

/// The row order of a tiled matrix: `(first row, rows)` of each tile.
fn tiles(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = rows / TILE_ROWS;
    (0..full)
        .map(|t| (t * TILE_ROWS, TILE_ROWS))
        .chain((full * TILE_ROWS..rows).map(|r| (r, 1)))
}

/// The offset added to Q8_0 values in the tiled layout (stored as `q ^ 0x80`).
pub const Q8_OFFSET: i32 = 128;
/// The offset of Q4_0 nibbles.
pub const Q4_OFFSET: i32 = 8;

/// Rearranges a row-major Q8_0 matrix (`q`: rows × `cols`, `scales`: one per `group`) into
/// the tiled layout (values as `q + 128`), writing `out_q` and `out_scales` (same lengths as
/// the inputs).
///
/// # Panics
/// If the shape is not tiled ([`q8_tiles`]) or a length is wrong.
pub fn tile_q8(
    q: &[i8],
    scales: &[f32],
    cols: usize,
    group: usize,
    out_q: &mut [i8],
    out_scales: &mut [f32],
) {
    assert!(
        q8_tiles(cols, group),
        "{cols} columns, group {group}: not tiled"
    );
    assert!(q.len().is_multiple_of(cols), "Q8_0 data is not whole rows");
    let rows = q.len() / cols;
    let per_block = BLOCK / group;
    assert_eq!(scales.len(), rows * cols / group, "Q8_0 scale count");
    assert_eq!((out_q.len(), out_scales.len()), (q.len(), scales.len()));
    let position: Vec<usize> = (0..BLOCK).map(|e| block_position(e, group)).collect();
    let (mut at, mut s_at) = (0, 0);
    for (first, n) in tiles(rows) {
        for chunk in 0..cols / BLOCK {
            for r in first..first + n {
                let src = &q[r * cols + chunk * BLOCK..][..BLOCK];
                let dst = &mut out_q[at..at + BLOCK];
                for (e, &v) in src.iter().enumerate() {
                    dst[position[e]] = v ^ i8::MIN;
                }
                at += BLOCK;
                let g0 = (r * cols + chunk * BLOCK) / group;
                out_scales[s_at..s_at + per_block].copy_from_slice(&scales[g0..g0 + per_block]);
                s_at += per_block;
            }
        }
    }
}

/// Rearranges a row-major Q4_0 matrix (baremetal v3: `q` holds two values per byte, element
/// `2i` in the low nibble) into the tiled layout.
///
/// # Panics
/// If the shape is not tiled ([`q4_tiles`]) or a length is wrong.
pub fn tile_q4(
    q: &[u8],
    scales: &[f32],
    cols: usize,
    group: usize,
    out_q: &mut [u8],
    out_scales: &mut [f32],
) {
    assert!(
        q4_tiles(cols, group),
        "{cols} columns, group {group}: not tiled"
    );
    let row_bytes = cols / 2;
    assert!(
        q.len().is_multiple_of(row_bytes),
        "Q4_0 data is not whole rows"
    );
    let rows = q.len() / row_bytes;
    let per_chunk = 2 * BLOCK / group;
    assert_eq!(scales.len(), rows * cols / group, "Q4_0 scale count");
    assert_eq!((out_q.len(), out_scales.len()), (q.len(), scales.len()));
    let nibble = |row: &[u8], e: usize| (row[e / 2] >> (4 * (e % 2))) & 0x0F;
    let position: Vec<usize> = (0..BLOCK).map(|e| block_position(e, group)).collect();
    let (mut at, mut s_at) = (0, 0);
    for (first, n) in tiles(rows) {
        for chunk in 0..cols / (2 * BLOCK) {
            for r in first..first + n {
                let row = &q[r * row_bytes..(r + 1) * row_bytes];
                let base = chunk * 2 * BLOCK;
                let dst = &mut out_q[at..at + BLOCK];
                for (e, &p) in position.iter().enumerate() {
                    dst[p] = nibble(row, base + e) | (nibble(row, base + BLOCK + e) << 4);
                }
                at += BLOCK;
                let g0 = (r * cols + base) / group;
                out_scales[s_at..s_at + per_chunk].copy_from_slice(&scales[g0..g0 + per_chunk]);
                s_at += per_chunk;
            }
        }
    }
}

/// [`block_position`] of every value of a block, for the hot per-input rearrangement.
pub fn block_positions(group: usize) -> [u8; BLOCK] {
    std::array::from_fn(|e| block_position(e, group) as u8)
}

/// Puts a quantised input (`x`, a whole number of blocks) in block order for `group`.
pub fn tile_input(x: &[i8], group: usize, out: &mut [i8]) {
    tile_input_with(x, &block_positions(group), out);
}

/// [`tile_input`] with the positions precomputed ([`block_positions`]).
#[inline]
pub fn tile_input_with(x: &[i8], positions: &[u8; BLOCK], out: &mut [i8]) {
    assert!(x.len().is_multiple_of(BLOCK) && out.len() == x.len());
    for (src, dst) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK)) {
        let dst: &mut [i8; BLOCK] = dst.try_into().expect("a whole block");
        for (&v, &p) in src.iter().zip(positions) {
            dst[p as usize & (BLOCK - 1)] = v;
        }
    }
}

/// Tokens per tile of the batched kernels that read [`token_tile_scales`].
pub const TOKEN_TILE: usize = 4;

/// The input scales of whole tiles of [`TOKEN_TILE`] tokens, arranged so that a batched kernel
/// reads the scales of one block of every token of a tile with one load: for token tile `j`,
/// block `b` (of `cols / BLOCK`), token `t` of the tile and group `g` of the block (of
/// `n = BLOCK / group`), `out[((j · blocks + b) · TOKEN_TILE + t) · n + g]` is token
/// `TOKEN_TILE · j + t`'s scale of group `b · n + g`. `xs` holds `tokens` rows of
/// `cols / group` scales; tokens past the last whole tile are left out.
///
/// # Panics
/// If `cols` is not whole blocks of whole groups, or a length is wrong.
pub fn token_tile_scales(xs: &[f32], tokens: usize, cols: usize, group: usize, out: &mut [f32]) {
    assert!(tiled_group(group) && cols.is_multiple_of(BLOCK));
    let (n, blocks, per_row) = (BLOCK / group, cols / BLOCK, cols / group);
    let tiles = tokens / TOKEN_TILE;
    assert!(xs.len() == tokens * per_row && out.len() >= tiles * TOKEN_TILE * per_row);
    let mut at = 0;
    for j in 0..tiles {
        for b in 0..blocks {
            for t in 0..TOKEN_TILE {
                let row = &xs[(TOKEN_TILE * j + t) * per_row..][..per_row];
                out[at..at + n].copy_from_slice(&row[b * n..(b + 1) * n]);
                at += n;
            }
        }
    }
}

/// `-offset · Σ` of each lane's four values of a tiled input: the term that turns a dot
/// product of unsigned `q + offset` ([`Q8_OFFSET`], [`Q4_OFFSET`]) into one of `q` (one i32
/// per four values).
pub fn input_correction(tiled_x: &[i8], offset: i32, out: &mut [i32]) {
    assert_eq!(out.len() * 4, tiled_x.len());
    for (o, lane) in out.iter_mut().zip(tiled_x.chunks_exact(4)) {
        *o = -offset * lane.iter().map(|&v| v as i32).sum::<i32>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_tile_scales_put_a_blocks_scales_of_four_tokens_together() {
        // 9 tokens (two whole tiles), 128 columns, groups of 32 (n = 2 per block).
        let (tokens, cols, group) = (9, 128, 32);
        let xs: Vec<f32> = (0..tokens * cols / group).map(|i| i as f32).collect();
        let mut out = vec![-1.0; tokens * cols / group];
        token_tile_scales(&xs, tokens, cols, group, &mut out);
        // Tile 1, block 1, token 2, group 1: token 6's group 3, i.e. xs[6 * 4 + 3].
        let at = ((2 + 1) * TOKEN_TILE + 2) * 2 + 1;
        assert_eq!(out[at], 27.0);
        assert_eq!(&out[..8], &[0.0, 1.0, 4.0, 5.0, 8.0, 9.0, 12.0, 13.0]);
        assert!(
            out[2 * 4 * 4..].iter().all(|&v| v == -1.0),
            "the ninth token is left out"
        );
    }

    #[test]
    fn block_position_is_a_permutation_with_whole_groups_per_lane() {
        for group in [16, 32, 64] {
            let mut seen = [false; BLOCK];
            for e in 0..BLOCK {
                let p = block_position(e, group);
                assert!(!seen[p], "group {group}: position {p} twice");
                seen[p] = true;
                // Lane i belongs to group i % n.
                assert_eq!((p / 4) % (BLOCK / group), e / group);
            }
        }
    }

    #[test]
    fn tiles_cover_every_row_once() {
        for rows in [1, 3, 4, 5, 8, 11] {
            let mut covered = vec![0; rows];
            for (first, n) in tiles(rows) {
                assert!(n == TILE_ROWS || first >= rows / TILE_ROWS * TILE_ROWS);
                for c in &mut covered[first..first + n] {
                    *c += 1;
                }
            }
            assert!(covered.iter().all(|&c| c == 1));
        }
    }

    #[test]
    fn tiled_q8_is_a_rearrangement_in_tile_order() {
        let (rows, cols, group) = (6, 128, 32);
        let q: Vec<i8> = (0..rows * cols).map(|i| (i % 251) as i8).collect();
        let scales: Vec<f32> = (0..rows * cols / group).map(|i| i as f32).collect();
        let (mut tq, mut ts) = (vec![0i8; q.len()], vec![0f32; scales.len()]);
        tile_q8(&q, &scales, cols, group, &mut tq, &mut ts);
        // Tile 0, chunk 1, row 2 starts at (1 * 4 + 2) * 64.
        let at = (4 + 2) * BLOCK;
        for e in 0..BLOCK {
            assert_eq!(
                tq[at + block_position(e, group)],
                q[2 * cols + BLOCK + e] ^ i8::MIN
            );
        }
        // Its scales: row 2's groups 2 and 3.
        assert_eq!(&ts[(4 + 2) * 2..][..2], &[2.0 * 4.0 + 2.0, 2.0 * 4.0 + 3.0]);
        // Rows 4 and 5 are single-row tiles, stored as untiled rows but permuted.
        assert_eq!(
            tq[4 * cols + block_position(5, group)],
            q[4 * cols + 5] ^ i8::MIN
        );
        assert_eq!(ts[4 * cols / group..], scales[4 * cols / group..]);
    }

    #[test]
    fn groups_follow_the_quantizer_default() {
        let mut cfg = crate::preset("stories15m").expect("preset");
        assert_eq!(int8_groups(&cfg), (32, 32));
        cfg.weight_format = WeightFormat::Q8_0 { group_size: 16 };
        assert_eq!(int8_groups(&cfg), (16, 32));
        let cfg = crate::preset("stories110m").expect("preset");
        assert_eq!(int8_groups(&cfg), (64, 32));
    }
}
