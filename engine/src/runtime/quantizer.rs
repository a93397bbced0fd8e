//! The runtime side of quantised inference: every matrix input quantised once per pass
//! (activation rounding, [`crate::format::quant::quantize_activations`], on the fastest
//! instruction set), and put in the tiled order the generated int8 kernels read.

use model_config::WeightFormat;

use crate::base::aligned::{AlignedBytes, AlignedVec};
use crate::format::quant::Q8Ref;
use crate::kernels::GenericKernels;

/// What a GEMV (one row) or a batched product (several rows) multiplies its matrix by: the f32
/// rows, and for quantised models their quantised copy (made once per input, shared by every
/// matrix that reads it).
#[derive(Debug, Clone, Copy)]
pub struct GemvInput<'a> {
    /// The input rows in f32, one after another.
    pub x: &'a [f32],
    /// How many rows `x` holds.
    pub rows: usize,
    /// The input quantised with the model's group size (Q8_0 models only).
    pub q8: Option<Q8Ref<'a>>,
    /// `q8` in the tiled block order, when the model has tiled matrices and the input is a
    /// whole number of blocks (see [`InputQuantizer::tile_inputs`]).
    pub tiled: Option<TiledInput<'a>>,
}

/// A quantised input in the tiled layout's block order (`model_config::tiled`); its scales
/// are the untiled input's.
#[derive(Debug, Clone, Copy)]
pub struct TiledInput<'a> {
    /// The int8 values, each 64-value block permuted as the tiled weights.
    pub q: &'a [i8],
    /// `-128 · Σ` of each four values: the lane corrections of Q8_0 matrices
    /// (`model_config::tiled::input_correction` with `Q8_OFFSET`).
    pub corr_q8: &'a [i32],
    /// `-8 · Σ` of each four values: those of Q4_0 matrices (`Q4_OFFSET`).
    pub corr_q4: &'a [i32],
    /// The scales by tiles of tokens (`model_config::tiled::token_tile_scales`; empty for
    /// fewer rows than a tile).
    pub scales_tt: &'a [f32],
}

/// The buffer every GEMV input of a Q8_0 model is quantised into, allocated once
/// (64-byte aligned, long enough for the longest input). Does nothing for f32 models.
#[derive(Debug)]
pub struct InputQuantizer {
    group: Option<usize>,
    /// The quantiser's instruction set, picked once (every one gives the same bits).
    kernels: GenericKernels,
    q: AlignedBytes,
    scales: AlignedVec,
    /// Whether inputs are also put in tiled order (with both formats' corrections).
    tiled: bool,
    positions: [u8; model_config::tiled::BLOCK],
    tiled_q: AlignedBytes,
    corr_q8: Vec<i32>,
    corr_q4: Vec<i32>,
    scales_tt: AlignedVec,
}

impl InputQuantizer {
    /// Buffers for inputs of up to `max_len` values in `format`.
    pub fn new(format: WeightFormat, max_len: usize) -> Self {
        let group = format.group_size();
        let (q_len, s_len) = match group {
            Some(g) => (max_len, max_len / g),
            None => (0, 0),
        };
        Self {
            group,
            kernels: GenericKernels::detect(),
            q: AlignedBytes::zeros(q_len),
            scales: AlignedVec::zeros(s_len),
            tiled: false,
            positions: [0; model_config::tiled::BLOCK],
            tiled_q: AlignedBytes::zeros(0),
            corr_q8: Vec::new(),
            corr_q4: Vec::new(),
            scales_tt: AlignedVec::zeros(0),
        }
    }

    /// Also provide every input in the tiled block order (for models whose matrices were
    /// tiled), with the Q4_0 lane corrections for Q4_0 models. Allocates once, here.
    pub fn tile_inputs(&mut self) {
        let Some(group) = self.group else { return };
        if !model_config::tiled::tiled_group(group) {
            return;
        }
        self.tiled = true;
        self.positions = model_config::tiled::block_positions(group);
        self.tiled_q = AlignedBytes::zeros(self.q.len());
        self.corr_q8 = vec![0; self.q.len() / 4];
        self.corr_q4 = vec![0; self.q.len() / 4];
        self.scales_tt = AlignedVec::zeros(self.scales.len());
    }

    /// `x`, `rows` rows one after another, as a GEMV or batched input: for Q8_0 and Q4_0,
    /// quantised (activation rounding) into the buffer. A group never straddles two rows (it
    /// divides the row length), so quantising the rows together is quantising each alone.
    /// Allocates nothing.
    #[inline]
    pub fn input<'a>(&'a mut self, x: &'a [f32], rows: usize) -> GemvInput<'a> {
        // Rows that are not whole groups feed no quantised matrix (a mixed GGUF keeps such
        // matrices in f32), so they stay unquantised.
        let whole = |g: usize| (x.len() / rows.max(1)).is_multiple_of(g);
        let Some(group) = self.group.filter(|&g| whole(g)) else {
            return GemvInput {
                x,
                rows,
                q8: None,
                tiled: None,
            };
        };
        let q = &mut self.q.as_i8_mut()[..x.len()];
        let scales = &mut self.scales[..x.len() / group];
        self.kernels.quantize_activations(x, group, q, scales);
        let row = x.len() / rows.max(1);
        let tiled = (self.tiled && row.is_multiple_of(model_config::tiled::BLOCK)).then(|| {
            let tq = &mut self.tiled_q.as_i8_mut()[..x.len()];
            model_config::tiled::tile_input_with(q, &self.positions, tq);
            // Both formats' corrections: a mixed (GGUF) model feeds one input to Q8_0 and Q4_0
            // matrices alike. -128·Σ is exactly 16 × (-8·Σ).
            let corr_q4 = &mut self.corr_q4[..x.len() / 4];
            model_config::tiled::input_correction(tq, model_config::tiled::Q4_OFFSET, corr_q4);
            let corr_q8 = &mut self.corr_q8[..x.len() / 4];
            for (c8, &c4) in corr_q8.iter_mut().zip(corr_q4.iter()) {
                *c8 = 16 * c4;
            }
            let tt = &mut self.scales_tt[..scales.len()];
            let whole = rows / model_config::tiled::TOKEN_TILE * model_config::tiled::TOKEN_TILE;
            model_config::tiled::token_tile_scales(scales, rows, row, group, tt);
            let scales_tt = &tt[..whole * row / group];
            TiledInput {
                q: tq,
                corr_q8,
                corr_q4,
                scales_tt,
            }
        });
        GemvInput {
            x,
            rows,
            q8: Some(Q8Ref { q, scales, group }),
            tiled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_quantizer_is_a_no_op_for_f32() {
        let mut f = InputQuantizer::new(WeightFormat::F32, 100);
        let x = [1.0f32; 8];
        assert!(f.input(&x, 1).q8.is_none());
        let mut q = InputQuantizer::new(WeightFormat::Q8_0 { group_size: 4 }, 16);
        let x = [254.0, -100.0, 50.0, 0.0, 3.0, 3.0, 3.0, -3.0];
        let got = q.input(&x, 1).q8.unwrap();
        assert_eq!(got.q, [127, -50, 25, 0, 127, 127, 127, -127]);
        assert_eq!(got.scales, [2.0, 3.0 / 127.0]);
        assert_eq!(got.q.as_ptr() as usize % 64, 0);
    }
}
