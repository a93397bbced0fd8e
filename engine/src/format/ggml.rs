//! ggml's tensor types as GGUF files store them: every type id with its block size and bytes
//! per block (so any file's tensor sizes can be checked), and scalar decoding to f32 of the ones
//! baremetal runs: F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K (layouts as llama.cpp's
//! `ggml-common.h`; decoding as its `dequantize_row_*`).

use crate::base::fp16;

/// A type id ggml does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownType(pub u32);

/// A ggml tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(u32);

/// (id, name, values per block, bytes per block) for every type ggml defines.
const TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// 32-bit floats.
    pub const F32: GgmlType = GgmlType(0);
    /// IEEE half floats.
    pub const F16: GgmlType = GgmlType(1);
    /// 4-bit blocks of 32 with an f16 scale.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// 8-bit blocks of 32 with an f16 scale.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// 4-bit super-blocks of 256 with 6-bit sub-block scales and minimums.
    pub const Q4_K: GgmlType = GgmlType(12);
    /// 6-bit super-blocks of 256 with 8-bit sub-block scales.
    pub const Q6_K: GgmlType = GgmlType(14);
    /// bfloat16.
    pub const BF16: GgmlType = GgmlType(30);

    /// The type with id `id`.
    pub fn from_id(id: u32) -> Result<Self, UnknownType> {
        TYPES
            .iter()
            .any(|t| t.0 == id)
            .then_some(GgmlType(id))
            .ok_or(UnknownType(id))
    }

    fn entry(self) -> &'static (u32, &'static str, usize, usize) {
        TYPES
            .iter()
            .find(|t| t.0 == self.0)
            .expect("GgmlType values come from TYPES")
    }

    /// ggml's name for it (`Q4_K`, `F16`, …).
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        self.entry().2
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.entry().3
    }

    /// Whether [`dequantize`] decodes it.
    pub fn decodable(self) -> bool {
        matches!(
            self,
            Self::F32 | Self::F16 | Self::BF16 | Self::Q8_0 | Self::Q4_0 | Self::Q4_K | Self::Q6_K
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    fp16::to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// bfloat16 bits to f32: the top half of an f32.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Decodes `bytes` of type `ty` (whole blocks) into `out` (one f32 per value).
///
/// # Panics
/// If the type is not [`GgmlType::decodable`] or the lengths disagree; callers check both.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (block, block_bytes) = (ty.block_size(), ty.block_bytes());
    assert_eq!(
        bytes.len() / block_bytes * block,
        out.len(),
        "dequantize {ty}: {} bytes for {} values",
        bytes.len(),
        out.len()
    );
    let blocks = bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes(b.try_into().unwrap())),
        GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = f16_at(b, 0)),
        GgmlType::BF16 => {
            blocks.for_each(|(b, o)| o[0] = bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
        }
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| {
            let d = f16_at(b, 0);
            for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                *o = d * q as i8 as f32;
            }
        }),
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| {
            let d = f16_at(b, 0);
            // The low nibbles are the block's first half, the high nibbles its second.
            for (j, &q) in b[2..18].iter().enumerate() {
                o[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }),
        GgmlType::Q4_K => blocks.for_each(|(b, o)| q4_k(b, o)),
        GgmlType::Q6_K => blocks.for_each(|(b, o)| q6_k(b, o)),
        other => panic!("dequantize: {other} is not decodable"),
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K super-block (llama.cpp's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, sc: &[u8]) -> (u8, u8) {
    if j < 4 {
        (sc[j] & 63, sc[j + 4] & 63)
    } else {
        (
            (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4),
            (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
        )
    }
}

/// One Q4_K super-block: `{f16 d, f16 dmin, u8 scales[12], u8 qs[128]}`; chunk `c` of 64
/// values uses `qs[32c..32c+32]`, low nibbles for its first 32 values, high for the rest.
fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, qs) = (&b[4..16], &b[16..144]);
    for c in 0..4 {
        let (s0, m0) = scale_min_k4(2 * c, sc);
        let (s1, m1) = scale_min_k4(2 * c + 1, sc);
        let (d0, min0) = (d * s0 as f32, dmin * m0 as f32);
        let (d1, min1) = (d * s1 as f32, dmin * m1 as f32);
        for l in 0..32 {
            let q = qs[32 * c + l];
            out[64 * c + l] = d0 * (q & 0x0F) as f32 - min0;
            out[64 * c + 32 + l] = d1 * (q >> 4) as f32 - min1;
        }
    }
}

/// One Q6_K super-block: `{u8 ql[128], u8 qh[64], i8 scales[16], f16 d}`, in two halves of 128.
fn q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let o = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(v: f32) -> [u8; 2] {
        fp16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn type_table_matches_ggml() {
        for (id, name, block, bytes) in [
            (0, "F32", 1, 4),
            (1, "F16", 1, 2),
            (2, "Q4_0", 32, 18),
            (8, "Q8_0", 32, 34),
            (12, "Q4_K", 256, 144),
            (14, "Q6_K", 256, 210),
            (30, "BF16", 1, 2),
        ] {
            let t = GgmlType::from_id(id).unwrap();
            assert_eq!(
                (t.name(), t.block_size(), t.block_bytes()),
                (name, block, bytes)
            );
        }
        assert_eq!(GgmlType::from_id(4), Err(UnknownType(4)));
        assert!(!GgmlType::from_id(13).unwrap().decodable());
    }

    #[test]
    fn q8_0_and_q4_0_blocks_decode_by_hand() {
        // Q8_0: d = 0.5, q = -16..16.
        let mut b = half(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut out);
        for (i, &v) in out.iter().enumerate() {
            assert_eq!(v, 0.5 * (i as f32 - 16.0));
        }
        // Q4_0: d = 2; byte j holds value j (low) and 15 - j (high), each minus 8.
        let mut b = half(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        dequantize(GgmlType::Q4_0, &b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * (j as f32 - 8.0), "low {j}");
            assert_eq!(out[j + 16], 2.0 * (7.0 - j as f32), "high {j}");
        }
    }

    #[test]
    fn q4_k_block_decodes_by_hand() {
        // d = 1, dmin = 0.5; sub-block j: scale j + 1, min 2j (6-bit packing of llama.cpp).
        let (s, m): (Vec<u8>, Vec<u8>) = (0..8).map(|j| (j as u8 + 1, 2 * j as u8)).unzip();
        let mut sc = [0u8; 12];
        for j in 0..4 {
            sc[j] = s[j] | ((s[j + 4] >> 4) << 6);
            sc[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            sc[j + 8] = (s[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
        }
        let qs: Vec<u8> = (0..128)
            .map(|i| (i % 16) as u8 | (((i / 7) % 16) as u8) << 4)
            .collect();
        let mut b = half(1.0).to_vec();
        b.extend(half(0.5));
        b.extend(sc);
        b.extend(&qs);
        let mut out = [0f32; 256];
        dequantize(GgmlType::Q4_K, &b, &mut out);
        for c in 0..4 {
            for l in 0..32 {
                let q = qs[32 * c + l];
                let (j0, j1) = (2 * c, 2 * c + 1);
                let lo = s[j0] as f32 * (q & 15) as f32 - 0.5 * m[j0] as f32;
                let hi = s[j1] as f32 * (q >> 4) as f32 - 0.5 * m[j1] as f32;
                assert_eq!(out[64 * c + l], lo, "chunk {c} low {l}");
                assert_eq!(out[64 * c + 32 + l], hi, "chunk {c} high {l}");
            }
        }
    }

    #[test]
    fn q6_k_block_decodes_by_hand() {
        // Value i of the super-block gets q6 = (7 i) mod 64, scale (i / 16) - 8, d = 0.25.
        let q6: Vec<u8> = (0..256).map(|i| ((7 * i) % 64) as u8).collect();
        let scales: Vec<i8> = (0..16).map(|k| k as i8 - 8).collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for half in 0..2 {
            for l in 0..32 {
                let base = 128 * half;
                let q = [
                    q6[base + l],
                    q6[base + l + 32],
                    q6[base + l + 64],
                    q6[base + l + 96],
                ];
                ql[64 * half + l] = (q[0] & 15) | ((q[2] & 15) << 4);
                ql[64 * half + l + 32] = (q[1] & 15) | ((q[3] & 15) << 4);
                qh[32 * half + l] =
                    (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend(half(0.25));
        let mut out = [0f32; 256];
        dequantize(GgmlType::Q6_K, &b, &mut out);
        for i in 0..256 {
            let want = 0.25 * scales[i / 16] as f32 * (q6[i] as f32 - 32.0);
            assert_eq!(out[i], want, "value {i}");
        }
    }

    #[test]
    fn halves_and_bfloats_decode() {
        let mut out = [0f32; 3];
        let b: Vec<u8> = [1.5f32, -2.0, 65504.0]
            .iter()
            .flat_map(|&v| half(v))
            .collect();
        dequantize(GgmlType::F16, &b, &mut out);
        assert_eq!(out, [1.5, -2.0, 65504.0]);
        let b: Vec<u8> = [1.5f32, -3.25e20, 7.0]
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        dequantize(GgmlType::BF16, &b, &mut out);
        assert_eq!(
            out,
            [
                1.5,
                f32::from_bits((-3.25e20f32).to_bits() & 0xffff_0000),
                7.0
            ]
        );
    }
}
