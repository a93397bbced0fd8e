//! Every kernel of every compiled model (the `MODEL_CONFIG` module at the crate root and the
//! fixed test models) against a plain f64 reference, for every instruction set this CPU
//! runs, on fresh seeded random inputs.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::Isa;

/// splitmix64: tiny, seedable and good enough to make every input distinct.
struct Rng(u64);

impl Rng {
    /// A generator for one test, seeded from `BAREMETAL_TEST_SEED` (if set) and the label,
    /// so a failure can be replayed and different tests get different numbers.
    fn for_test(label: &str) -> Rng {
        let base = std::env::var("BAREMETAL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0x5eed_ba5e_d00d_f00d);
        let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        Rng(base ^ hash)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1) with 24 random bits.
    fn value(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn fill(&mut self, values: &mut [f32]) {
        values.iter_mut().for_each(|v| *v = self.value());
    }
}

/// Checks one kernel output against the f64 reference.
///
/// The tolerance is relative to `Σ|wᵢ·xᵢ|`, the natural scale of a dot product's rounding
/// error (the exact result can be near zero through cancellation). A correct f32 kernel with
/// several accumulators makes errors that grow like √n·2⁻²⁴·Σ|wᵢxᵢ| (well under 1e-6 for
/// n ≤ 2048, and the worst case for a 64-long accumulator chain is ~4e-6), so 1e-5 never
/// flags a correct kernel; a real bug (a skipped, repeated or misaligned chunk) moves the
/// result by about one term, ~Σ|wᵢxᵢ|/n ≥ 5e-4 of the scale for n ≤ 2048. The absolute 1e-6
/// covers scales near zero.
fn assert_close(what: &str, got: f32, expected: f64, scale: f64) {
    let tolerance = 1e-5 * scale + 1e-6;
    let error = (got as f64 - expected).abs();
    assert!(
        error <= tolerance,
        "{what}: got {got}, expected {expected} (error {error:e} > tolerance {tolerance:e})"
    );
}

/// One random matrix and input with the f64 reference results.
struct GemvCase<const R: usize, const C: usize> {
    w: Box<[[f32; C]; R]>,
    x: Box<[f32; C]>,
    /// Per row: (Σ wᵢxᵢ, Σ |wᵢxᵢ|), both in f64.
    expected: Vec<(f64, f64)>,
}

impl<const R: usize, const C: usize> GemvCase<R, C> {
    fn new(rng: &mut Rng) -> Self {
        let mut rows = vec![[0.0f32; C]; R];
        rows.iter_mut().for_each(|row| rng.fill(row));
        let w: Box<[[f32; C]; R]> = rows.into_boxed_slice().try_into().expect("R rows");
        let mut x = Box::new([0.0f32; C]);
        rng.fill(&mut x[..]);
        let expected = w
            .iter()
            .map(|row| {
                row.iter()
                    .zip(x.iter())
                    .fold((0.0, 0.0), |(sum, abs), (&a, &b)| {
                        let p = a as f64 * b as f64;
                        (sum + p, abs + p.abs())
                    })
            })
            .collect();
        GemvCase { w, x, expected }
    }

    /// Row blocks for `gemv_rows`: empty, 1, 3 and 5 rows, 7 rows from an odd start, the
    /// last row, the second half; each clipped to the matrix.
    fn blocks() -> Vec<(usize, usize)> {
        [
            (0, 0),
            (0, 1),
            (R / 2, 3),
            (1, 5),
            (R / 3, 7),
            (R.saturating_sub(1), 1),
            (R / 2, R - R / 2),
        ]
        .into_iter()
        .filter(|&(start, len)| start + len <= R)
        .collect()
    }

    fn check(
        &self,
        label: &str,
        gemv: impl Fn(&[[f32; C]; R], &[f32; C], &mut [f32; R]),
        gemv_rows: impl Fn(&[[f32; C]], &[f32; C], &mut [f32]),
    ) {
        // NaN in every output slot: a row the kernel forgets to write cannot pass.
        let mut out = Box::new([f32::NAN; R]);
        gemv(&self.w, &self.x, &mut out);
        for (r, (&got, &(expected, scale))) in out.iter().zip(&self.expected).enumerate() {
            assert_close(&format!("{label} gemv row {r}"), got, expected, scale);
        }

        for (start, len) in Self::blocks() {
            // One guard value past the block catches a write beyond `out`.
            let mut buf = vec![f32::NAN; len + 1];
            buf[len] = 12345.0;
            gemv_rows(&self.w[start..start + len], &self.x, &mut buf[..len]);
            for (i, &got) in buf[..len].iter().enumerate() {
                let (expected, scale) = self.expected[start + i];
                assert_close(
                    &format!(
                        "{label} gemv_rows({start}..{}) row {}",
                        start + len,
                        start + i
                    ),
                    got,
                    expected,
                    scale,
                );
            }
            assert_eq!(buf[len], 12345.0, "{label}: gemv_rows wrote past its block");
        }

        if R >= 2 {
            let mut small = [0.0f32; 1];
            let mismatch = catch_unwind(AssertUnwindSafe(|| {
                gemv_rows(&self.w[..2], &self.x, &mut small)
            }));
            assert!(
                mismatch.is_err(),
                "{label}: 2 weight rows with 1 output must panic"
            );
        }
    }
}

/// Token counts the batched kernels are checked at: every count up to two tiles of every ISA,
/// odd tails, and a prompt-sized block.
const BATCHES: [usize; 14] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 17, 33];

/// Checks a batched kernel (`gemm_rows`) on row blocks of a random matrix: against the f64
/// reference, and bit for bit against the GEMV of each token alone (batch invariance). The
/// output has a stride wider than the block, NaN in every slot the kernel must write, and a
/// guard value in every slot it must not.
fn check_gemm<const C: usize>(
    label: &str,
    rng: &mut Rng,
    w: &[[f32; C]],
    gemv_rows: impl Fn(&[[f32; C]], &[f32; C], &mut [f32]),
    gemm_rows: impl Fn(&[[f32; C]], &[[f32; C]], *mut f32, usize),
) {
    let rows = w.len();
    let blocks = [
        (0, rows.min(37)),
        (rows / 3, rows.min(13).min(rows - rows / 3)),
        (rows - rows.min(9), rows.min(9)),
    ];
    for tokens in BATCHES {
        let mut x = vec![[0.0f32; C]; tokens];
        x.iter_mut().for_each(|row| rng.fill(row));
        for (start, len) in blocks {
            let w = &w[start..start + len];
            let ld = len + 3;
            const GUARD: f32 = 12345.0;
            let mut out = vec![GUARD; tokens * ld];
            for t in 0..tokens {
                out[t * ld..t * ld + len].fill(f32::NAN);
            }
            gemm_rows(w, &x, out.as_mut_ptr(), ld);
            let mut single = vec![f32::NAN; len];
            for (t, xt) in x.iter().enumerate() {
                gemv_rows(w, xt, &mut single);
                for r in 0..len {
                    let got = out[t * ld + r];
                    let what = format!("{label} gemm rows {start}+{r} token {t} of {tokens}");
                    let (sum, scale) = w[r].iter().zip(xt).fold((0.0, 0.0), |(s, a), (&p, &q)| {
                        let v = p as f64 * q as f64;
                        (s + v, a + v.abs())
                    });
                    assert_close(&what, got, sum, scale);
                    assert_eq!(
                        got.to_bits(),
                        single[r].to_bits(),
                        "{what}: batched {got} differs from the GEMV's {}",
                        single[r]
                    );
                }
                assert!(
                    out[t * ld + len..(t + 1) * ld].iter().all(|&v| v == GUARD),
                    "{label}: gemm wrote outside its block (token {t} of {tokens})"
                );
            }
        }
    }
}

/// RMSNorm against llama2.c's formula in f64, on three scales of input (tiny, unit, large)
/// so both the epsilon and the sum of squares matter.
fn check_rmsnorm<const N: usize>(
    label: &str,
    rng: &mut Rng,
    eps: f32,
    rmsnorm: impl Fn(&mut [f32; N], &[f32; N], &[f32; N]),
) {
    for magnitude in [1e-3f32, 1.0, 100.0] {
        let mut x = [0.0f32; N];
        let mut weight = [0.0f32; N];
        rng.fill(&mut x);
        rng.fill(&mut weight);
        x.iter_mut().for_each(|v| *v *= magnitude);
        let ss = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / N as f64 + eps as f64;
        let scale = 1.0 / ss.sqrt();
        let mut out = [f32::NAN; N];
        rmsnorm(&mut out, &x, &weight);
        for i in 0..N {
            let expected = weight[i] as f64 * (scale * x[i] as f64);
            // Relative 1e-5 covers the f32 sum of squares (√N·2⁻²⁴ typical) plus the sqrt,
            // division and two products; scaled by |weight·x·scale| like the GEMV bound.
            let bound = (weight[i] as f64 * x[i] as f64 * scale).abs().max(1e-3);
            assert_close(
                &format!("{label} rmsnorm (|x| ~ {magnitude}) element {i}"),
                out[i],
                expected,
                bound,
            );
        }
    }
}

/// Row blocks a tiled int8 kernel may be given (threads split on tile boundaries): the whole
/// matrix, the first tile, a middle stretch, and the end from the last tile boundary (which
/// holds the single-row tiles when `rows % 4 != 0`).
fn tile_blocks(rows: usize) -> Vec<(usize, usize)> {
    let tile = model_config::tiled::TILE_ROWS;
    let last = (rows.saturating_sub(1) / tile) * tile;
    [
        (0, rows),
        (0, tile.min(rows)),
        (tile, 3 * tile),
        (last, rows - last),
    ]
    .into_iter()
    .filter(|&(start, len)| start + len <= rows)
    .collect()
}

/// Runs `kernel(rows, w, w_scales, out)` on each tile block of a tiled matrix and checks each
/// row against `expected` (sum, scale) with a NaN-prefilled output and a guard value.
fn check_int8_blocks(
    label: &str,
    rows: usize,
    bytes_per_row: usize,
    scales_per_row: usize,
    expected: &[(f64, f64)],
    kernel: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>, &mut [f32]),
) {
    for (start, len) in tile_blocks(rows) {
        let mut buf = vec![f32::NAN; len + 1];
        buf[len] = 12345.0;
        kernel(
            start * bytes_per_row..(start + len) * bytes_per_row,
            start * scales_per_row..(start + len) * scales_per_row,
            &mut buf[..len],
        );
        for (i, &got) in buf[..len].iter().enumerate() {
            let (sum, scale) = expected[start + i];
            assert_close(
                &format!("{label} rows {start}..{} row {}", start + len, start + i),
                got,
                sum,
                scale,
            );
        }
        assert_eq!(buf[len], 12345.0, "{label}: wrote past its block");
    }
}

/// A random int8 input of `cols` values with one positive scale per `group`.
fn int8_input(rng: &mut Rng, cols: usize, group: usize) -> (Vec<i8>, Vec<f32>) {
    let q = (0..cols)
        .map(|_| (rng.value() * 127.0).round() as i8)
        .collect();
    let s = (0..cols / group)
        .map(|_| 0.001 + 0.02 * rng.value().abs())
        .collect();
    (q, s)
}

/// The f64 reference of a grouped int8 GEMV: per row Σ_g w_s·x_s·Σ q·x_q, and the scale
/// Σ_g |w_s·x_s|·Σ |q·x_q| for [`assert_close`].
fn int8_reference(
    q: impl Fn(usize) -> i32,
    w_scales: &[f32],
    xq: &[i8],
    xs: &[f32],
    rows: usize,
    group: usize,
) -> Vec<(f64, f64)> {
    let cols = xq.len();
    (0..rows)
        .map(|r| {
            (0..cols / group).fold((0.0, 0.0), |(sum, abs), g| {
                let s = w_scales[r * cols / group + g] as f64 * xs[g] as f64;
                let (dot, dot_abs) =
                    (g * group..(g + 1) * group).fold((0i64, 0i64), |(d, a), e| {
                        let p = q(r * cols + e) as i64 * xq[e] as i64;
                        (d + p, a + p.abs())
                    });
                (sum + s * dot as f64, abs + (s * dot_abs as f64).abs())
            })
        })
        .collect()
}

/// The f64 reference rows `(sum, scale)` of a matrix for one token's `(values, scales)`.
type Reference<'a> = &'a dyn Fn(&[i8], &[f32]) -> Vec<(f64, f64)>;
/// A single-token int8 kernel: `(w, w_scales, x, x_scales, corr, out)`.
type Single<'a, W> = &'a dyn Fn(&[W], &[f32], &[i8], &[f32], &[i32], &mut [f32]);
/// A batched int8 kernel: `(w, w_scales, inputs, out, ld)`.
type Batch<'a, W> = &'a dyn Fn(&[W], &[f32], crate::TiledInputs, *mut f32, usize);

/// Tiled inputs of `tokens` tokens, one after another: values, scales, lane corrections (for
/// `offset`), and each token's f64 reference rows from `reference(xq, xs)`.
struct BatchInput {
    x: Vec<i8>,
    xs: Vec<f32>,
    corr: Vec<i32>,
    expected: Vec<Vec<(f64, f64)>>,
}

fn batch_input(
    rng: &mut Rng,
    tokens: usize,
    cols: usize,
    group: usize,
    offset: i32,
    reference: Reference,
) -> BatchInput {
    use model_config::tiled::{input_correction, tile_input};
    let mut b = BatchInput {
        x: vec![0; tokens * cols],
        xs: Vec::new(),
        corr: vec![0; tokens * cols / 4],
        expected: Vec::new(),
    };
    for t in 0..tokens {
        let (xq, xs) = int8_input(rng, cols, group);
        let tx = &mut b.x[t * cols..(t + 1) * cols];
        tile_input(&xq, group, tx);
        input_correction(tx, offset, &mut b.corr[t * cols / 4..(t + 1) * cols / 4]);
        b.expected.push(reference(&xq, &xs));
        b.xs.extend_from_slice(&xs);
    }
    b
}

/// Checks a batched int8 kernel on every tile block and token count: against the f64 reference,
/// and bit for bit against the single-token kernel (batch invariance); NaN in every output slot
/// it must write, a guard in every slot it must not.
#[allow(clippy::too_many_arguments)]
fn check_int8_batch<W: Copy>(
    label: &str,
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    group: usize,
    offset: i32,
    (w, ws): (&[W], &[f32]),
    bytes_per_row: usize,
    reference: Reference,
    single: Single<W>,
    batch: Batch<W>,
) {
    const GUARD: f32 = 12345.0;
    let spr = cols / group;
    for tokens in BATCHES {
        let input = batch_input(rng, tokens, cols, group, offset, reference);
        for (start, len) in tile_blocks(rows) {
            let (wb, sb) = (
                &w[start * bytes_per_row..(start + len) * bytes_per_row],
                &ws[start * spr..(start + len) * spr],
            );
            let ld = len + 5;
            let mut out = vec![GUARD; tokens * ld];
            for t in 0..tokens {
                out[t * ld..t * ld + len].fill(f32::NAN);
            }
            let mut table = vec![f32::NAN; input.xs.len()];
            model_config::tiled::token_tile_scales(&input.xs, tokens, cols, group, &mut table);
            let inputs = crate::TiledInputs {
                q: &input.x,
                scales: &input.xs,
                scales_tt: &table,
                corr: &input.corr,
            };
            batch(wb, sb, inputs, out.as_mut_ptr(), ld);
            let mut alone = vec![f32::NAN; len];
            for t in 0..tokens {
                let (x, xs, c) = (
                    &input.x[t * cols..(t + 1) * cols],
                    &input.xs[t * spr..(t + 1) * spr],
                    &input.corr[t * cols / 4..(t + 1) * cols / 4],
                );
                single(wb, sb, x, xs, c, &mut alone);
                for r in 0..len {
                    let got = out[t * ld + r];
                    let what = format!("{label} batch rows {start}+{r} token {t} of {tokens}");
                    let (sum, scale) = input.expected[t][start + r];
                    assert_close(&what, got, sum, scale);
                    assert_eq!(
                        got.to_bits(),
                        alone[r].to_bits(),
                        "{what}: batched {got} differs from the single-token kernel's {}",
                        alone[r]
                    );
                }
                assert!(
                    out[t * ld + len..(t + 1) * ld].iter().all(|&v| v == GUARD),
                    "{label}: batched kernel wrote outside its block (token {t} of {tokens})"
                );
            }
        }
    }
}

/// Checks a tiled Q8_0 kernel for a `rows`×`cols` matrix against the f64 reference.
fn check_q8(
    label: &str,
    rng: &mut Rng,
    (rows, cols, group): (usize, usize, usize),
    kernel: impl Fn(&[i8], &[f32], &[i8], &[f32], &[i32], &mut [f32]),
    batch: impl Fn(&[i8], &[f32], crate::TiledInputs, *mut f32, usize),
) {
    use model_config::tiled::{input_correction, tile_input, tile_q8, Q8_OFFSET};
    let q: Vec<i8> = (0..rows * cols)
        .map(|_| (rng.value() * 127.0).round() as i8)
        .collect();
    let ws: Vec<f32> = (0..rows * cols / group)
        .map(|_| 0.001 + 0.02 * rng.value().abs())
        .collect();
    let (xq, xs) = int8_input(rng, cols, group);
    let expected = int8_reference(|i| q[i] as i32, &ws, &xq, &xs, rows, group);
    let (mut tq, mut ts, mut tx) = (vec![0i8; q.len()], vec![0f32; ws.len()], vec![0i8; cols]);
    tile_q8(&q, &ws, cols, group, &mut tq, &mut ts);
    tile_input(&xq, group, &mut tx);
    let mut corr = vec![0i32; cols / 4];
    input_correction(&tx, Q8_OFFSET, &mut corr);
    check_int8_blocks(label, rows, cols, cols / group, &expected, |b, s, out| {
        kernel(&tq[b], &ts[s], &tx, &xs, &corr, out)
    });
    let reference =
        |xq: &[i8], xs: &[f32]| int8_reference(|i| q[i] as i32, &ws, xq, xs, rows, group);
    check_int8_batch(
        label,
        rng,
        rows,
        cols,
        group,
        Q8_OFFSET,
        (&tq, &ts),
        cols,
        &reference,
        &kernel,
        &batch,
    );
}

/// Checks a tiled Q4_0 kernel: values in [-8, 7] stored as baremetal v3 nibbles, then tiled.
fn check_q4(
    label: &str,
    rng: &mut Rng,
    (rows, cols, group): (usize, usize, usize),
    kernel: impl Fn(&[u8], &[f32], &[i8], &[f32], &[i32], &mut [f32]),
    batch: impl Fn(&[u8], &[f32], crate::TiledInputs, *mut f32, usize),
) {
    use model_config::tiled::{input_correction, tile_input, tile_q4, Q4_OFFSET};
    let q: Vec<i8> = (0..rows * cols)
        .map(|_| ((rng.value() * 8.0).floor() as i8).clamp(-8, 7))
        .collect();
    let packed: Vec<u8> = q
        .chunks_exact(2)
        .map(|p| ((p[0] + 8) as u8) | (((p[1] + 8) as u8) << 4))
        .collect();
    let ws: Vec<f32> = (0..rows * cols / group)
        .map(|_| 0.001 + 0.02 * rng.value().abs())
        .collect();
    let (xq, xs) = int8_input(rng, cols, group);
    let expected = int8_reference(|i| q[i] as i32, &ws, &xq, &xs, rows, group);
    let (mut tq, mut ts, mut tx) = (
        vec![0u8; packed.len()],
        vec![0f32; ws.len()],
        vec![0i8; cols],
    );
    tile_q4(&packed, &ws, cols, group, &mut tq, &mut ts);
    tile_input(&xq, group, &mut tx);
    let mut corr = vec![0i32; cols / 4];
    input_correction(&tx, Q4_OFFSET, &mut corr);
    check_int8_blocks(
        label,
        rows,
        cols / 2,
        cols / group,
        &expected,
        |b, s, out| kernel(&tq[b], &ts[s], &tx, &xs, &corr, out),
    );
    let reference =
        |xq: &[i8], xs: &[f32]| int8_reference(|i| q[i] as i32, &ws, xq, xs, rows, group);
    check_int8_batch(
        label,
        rng,
        rows,
        cols,
        group,
        Q4_OFFSET,
        (&tq, &ts),
        cols / 2,
        &reference,
        &kernel,
        &batch,
    );
}

/// Kernels for every instruction set this CPU runs, checking that `for_isa` agrees with
/// `Isa::is_supported` on the way.
macro_rules! supported_kernels {
    ($m:ident) => {
        Isa::all()
            .iter()
            .filter_map(|&isa| {
                let kernels = $m::Kernels::for_isa(isa);
                assert_eq!(
                    kernels.is_some(),
                    isa.is_supported(),
                    "for_isa({isa}) vs is_supported"
                );
                kernels
            })
            .collect::<Vec<_>>()
    };
}

/// The tests of one compiled model: `model_tests!(test_module, path::to::model, "name",
/// dim = D, shapes = [(R, C), ...])`, invoked from the `kernel_tests.rs` that build.rs
/// writes (it knows each model's shapes).
macro_rules! model_tests {
    ($test:ident, $($m:ident)::+, $name:literal, dim = $dim:literal, shapes = [$(($r:literal, $c:literal)),* $(,)?]) => {
        mod $test {
            use super::*;
            use $($m)::+ as m;

            #[test]
            fn gemv_matches_f64_reference_on_every_isa() {
                let all = supported_kernels!(m);
                assert!(all.iter().any(|k| k.isa() == Isa::Portable));
                $(
                    {
                        let mut rng = Rng::for_test(concat!($name, " gemv ", $r, "x", $c));
                        let case = GemvCase::<$r, $c>::new(&mut rng);
                        for kernels in &all {
                            let label = format!("{} {}x{} on {}", $name, $r, $c, kernels.isa());
                            case.check(
                                &label,
                                |w, x, out| <m::Kernels as m::Gemv<$r, $c>>::gemv(kernels, w, x, out),
                                |w, x, out| <m::Kernels as m::Gemv<$r, $c>>::gemv_rows(kernels, w, x, out),
                            );
                            check_gemm::<$c>(
                                &label,
                                &mut rng,
                                &case.w[..],
                                |w, x, out| <m::Kernels as m::Gemv<$r, $c>>::gemv_rows(kernels, w, x, out),
                                // SAFETY: check_gemm passes an output of x.len() rows of ld ≥ w.len().
                                |w, x, out, ld| unsafe { <m::Kernels as m::Gemv<$r, $c>>::gemm_rows(kernels, w, x, out, ld) },
                            );
                        }
                    }
                )*
            }

            #[test]
            fn rmsnorm_matches_f64_reference_on_every_isa() {
                for kernels in supported_kernels!(m) {
                    let label = format!("{} on {}", $name, kernels.isa());
                    let mut rng = Rng::for_test(&label);
                    check_rmsnorm::<$dim>(&label, &mut rng, m::NORM_EPS, |out, x, w| {
                        <m::Kernels as m::RmsNorm<$dim>>::rmsnorm(&kernels, out, x, w)
                    });
                }
            }

            #[test]
            fn int8_kernels_match_f64_reference_on_every_isa() {
                let all: Vec<m::Int8Kernels> = crate::Int8Isa::all()
                    .iter()
                    .filter_map(|&isa| m::Int8Kernels::for_isa(isa))
                    .collect();
                assert!(all.iter().all(|k| k.isa().is_supported()));
                assert!(all.iter().any(|k| k.isa() == crate::Int8Isa::Portable));
                let cfg = ::model_config::ModelConfig::from_toml_str(m::CONFIG_TOML).expect("CONFIG_TOML parses");
                assert_eq!((m::Q8_GROUP, m::Q4_GROUP), ::model_config::tiled::int8_groups(&cfg));
                for kernels in &all {
                    let isa = kernels.isa();
                    for &(rows, cols) in m::Q8_SHAPES {
                        let label = format!("{} q8 {rows}x{cols} group {} on {isa}", $name, m::Q8_GROUP);
                        let mut rng = Rng::for_test(&label);
                        let k = kernels.q8(rows, cols, m::Q8_GROUP).expect("a kernel for every listed shape");
                        assert!(kernels.q8(rows, cols, m::Q8_GROUP * 2).is_none(), "{label}: other group");
                        check_q8(
                            &label, &mut rng, (rows, cols, m::Q8_GROUP),
                            |w, ws, x, xs, c, out| k.run(w, ws, x, xs, c, out),
                            // SAFETY: check_int8_batch passes an output of every token's rows.
                            |w, ws, x, out, ld| unsafe { k.run_batch(w, ws, x, out, ld) },
                        );
                    }
                    for &(rows, cols) in m::Q4_SHAPES {
                        let label = format!("{} q4 {rows}x{cols} group {} on {isa}", $name, m::Q4_GROUP);
                        let mut rng = Rng::for_test(&label);
                        let k = kernels.q4(rows, cols, m::Q4_GROUP).expect("a kernel for every listed shape");
                        check_q4(
                            &label, &mut rng, (rows, cols, m::Q4_GROUP),
                            |w, ws, x, xs, c, out| k.run(w, ws, x, xs, c, out),
                            // SAFETY: check_int8_batch passes an output of every token's rows.
                            |w, ws, x, out, ld| unsafe { k.run_batch(w, ws, x, out, ld) },
                        );
                    }
                    // Exactly the shapes whose rows are whole chunks are listed.
                    for s in cfg.gemv_shapes() {
                        assert_eq!(
                            m::Q8_SHAPES.contains(&(s.rows, s.cols)),
                            ::model_config::tiled::q8_tiles(s.cols, m::Q8_GROUP),
                            "{} q8 {s}", $name
                        );
                        assert_eq!(
                            m::Q4_SHAPES.contains(&(s.rows, s.cols)),
                            ::model_config::tiled::q4_tiles(s.cols, m::Q4_GROUP),
                            "{} q4 {s}", $name
                        );
                    }
                }
            }

            #[test]
            fn constants_match_the_config() {
                let cfg = ::model_config::ModelConfig::from_toml_str(m::CONFIG_TOML).expect("CONFIG_TOML parses");
                assert_eq!(m::MODEL_NAME, $name);
                assert_eq!(cfg.name, $name);
                assert_eq!(
                    (m::DIM, m::HIDDEN_DIM, m::N_LAYERS, m::N_HEADS, m::N_KV_HEADS, m::VOCAB_SIZE, m::SEQ_LEN),
                    (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.seq_len)
                );
                assert_eq!((m::HEAD_DIM, m::KV_DIM), (cfg.head_dim(), cfg.kv_dim()));
                assert_eq!(m::SHARED_CLASSIFIER, cfg.shared_classifier);
                assert_eq!((m::ROPE_THETA, m::NORM_EPS), (cfg.rope_theta, cfg.norm_eps));
                assert_eq!(m::ROPE_FREQ_SCALE, cfg.rope_freq_scale);
                assert_eq!(m::ROPE_FREQ_FACTORS, cfg.rope_freq_factors.as_deref());
                let shapes: Vec<(usize, usize)> = cfg.gemv_shapes().iter().map(|s| (s.rows, s.cols)).collect();
                assert_eq!(m::GEMV_SHAPES, shapes.as_slice());
                assert_eq!(m::DIM, $dim);
            }
        }
    };
}

include!(concat!(env!("OUT_DIR"), "/kernel_tests.rs"));
