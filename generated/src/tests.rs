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
                let shapes: Vec<(usize, usize)> = cfg.gemv_shapes().iter().map(|s| (s.rows, s.cols)).collect();
                assert_eq!(m::GEMV_SHAPES, shapes.as_slice());
                assert_eq!(m::DIM, $dim);
            }
        }
    };
}

include!(concat!(env!("OUT_DIR"), "/kernel_tests.rs"));
