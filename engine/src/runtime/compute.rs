//! The machine's arithmetic peak, measured: independent chains of the widest fused multiply-add
//! (f32) and, where the CPU has it, of AVX-512 VNNI's `vpdpbusd` (int8 dot products), long
//! enough to fill every port. The compute roofline prompt processing is judged against, as
//! decode is judged against [`crate::runtime::bandwidth`].

use std::time::Instant;

use crate::kernels::Isa;

/// Peak arithmetic rates, in 10^9 operations per second (a multiply-add counts as two).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ComputePeak {
    /// f32 fused multiply-adds, GFLOP/s.
    pub f32_gflops: Option<f64>,
    /// int8 dot products (`vpdpbusd`), GOP/s.
    pub int8_gops: Option<f64>,
    /// Threads measured at once.
    pub threads: usize,
}

/// Iterations of each chain per timed pass: ~100 ms of work on one core.
const ITERATIONS: u64 = 8_000_000;

/// Measures the peaks on `threads` threads with `isa` (best of three passes each).
pub fn measure(isa: Isa, threads: usize) -> ComputePeak {
    let threads = threads.max(1);
    let run = |f: fn(u64) -> f64| -> Option<f64> {
        let mut best = 0.0f64;
        for _ in 0..3 {
            let t = Instant::now();
            let ops: f64 = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| s.spawn(move || f(ITERATIONS)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            });
            best = best.max(ops / t.elapsed().as_secs_f64() / 1e9);
        }
        (best > 0.0).then_some(best)
    };
    let (f32_probe, int8_probe) = probes(isa);
    ComputePeak {
        f32_gflops: f32_probe.and_then(run),
        int8_gops: int8_probe.and_then(run),
        threads,
    }
}

/// The probe functions this CPU runs for `isa`: each returns the operations it performed.
type Probe = fn(u64) -> f64;

fn probes(isa: Isa) -> (Option<Probe>, Option<Probe>) {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw");
        match isa {
            Isa::Avx512 if isa.is_supported() => {
                let int8: Option<Probe> = if vnni { Some(x86::vnni) } else { None };
                return (Some(x86::fma512), int8);
            }
            Isa::Avx2 if isa.is_supported() => return (Some(x86::fma256), None),
            _ => {}
        }
    }
    let _ = isa;
    (None, None)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// Sixteen chains: 4-cycle latency × 2 ports × 2 for slack.
    const CHAINS: usize = 16;

    pub(super) fn fma512(n: u64) -> f64 {
        // SAFETY: only returned by `probes` after the AVX-512F check.
        unsafe { fma512_impl(n) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn fma512_impl(n: u64) -> f64 {
        let mut acc = [_mm512_set1_ps(0.5); CHAINS];
        let (a, b) = (_mm512_set1_ps(0.999_99), _mm512_set1_ps(1e-6));
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
        std::hint::black_box(_mm512_reduce_add_ps(sum));
        (n * CHAINS as u64 * 16 * 2) as f64
    }

    pub(super) fn fma256(n: u64) -> f64 {
        // SAFETY: only returned by `probes` after the AVX2+FMA check.
        unsafe { fma256_impl(n) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma256_impl(n: u64) -> f64 {
        let mut acc = [_mm256_set1_ps(0.5); 12];
        let (a, b) = (_mm256_set1_ps(0.999_99), _mm256_set1_ps(1e-6));
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        std::hint::black_box(lanes);
        (n * 12 * 8 * 2) as f64
    }

    pub(super) fn vnni(n: u64) -> f64 {
        // SAFETY: only returned by `probes` after the AVX-512 VNNI check.
        unsafe { vnni_impl(n) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_impl(n: u64) -> f64 {
        let mut acc = [_mm512_set1_epi32(1); CHAINS];
        let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_si512(), |s, &v| _mm512_add_epi32(s, v));
        std::hint::black_box(_mm512_reduce_add_epi32(sum));
        // 64 multiply-adds per instruction.
        (n * CHAINS as u64 * 64 * 2) as f64
    }
}
