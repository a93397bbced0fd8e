//! The machine's sustained memory read bandwidth, measured the way the kernels read weights:
//! several concurrent sequential streams, SIMD loads, a reduction so nothing is optimised away.
//! The buffer is many times the last-level cache, so this is DRAM, not cache, bandwidth.

use std::time::Instant;

use crate::base::aligned::AlignedVec;
use crate::kernels::Isa;

/// Streams read at once, as a 4-row GEMV tile does.
const STREAMS: usize = 4;

/// A bandwidth measurement.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    /// Best pass, in GB/s (10^9 bytes per second).
    pub best_gbs: f64,
    /// Bytes read per pass.
    pub bytes: usize,
    /// Passes timed.
    pub passes: usize,
    /// Threads reading at once.
    pub threads: usize,
}

/// Reads a `bytes`-sized buffer `passes` times with `isa`'s widest loads, split across
/// `threads` threads (as the kernels are), and returns the best pass.
pub fn measure(bytes: usize, passes: usize, isa: Isa, threads: usize) -> Bandwidth {
    let threads = threads.max(1);
    let n = (bytes / 4).next_multiple_of(threads * STREAMS * 64);
    let mut buf = AlignedVec::zeros(n);
    // Touch every page with non-constant data so reads hit real, distinct memory.
    for (i, v) in buf.iter_mut().enumerate() {
        *v = (i % 251) as f32 * 1e-3;
    }
    let mut best = f64::MAX;
    let mut sink = 0.0f32;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        sink += if threads == 1 {
            read_all(&buf, isa)
        } else {
            std::thread::scope(|scope| {
                let parts: Vec<_> = buf
                    .chunks_exact(n / threads)
                    .map(|part| scope.spawn(move || read_all(part, isa)))
                    .collect();
                parts
                    .into_iter()
                    .map(|p| p.join().unwrap_or(0.0))
                    .sum::<f32>()
            })
        };
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    Bandwidth {
        best_gbs: (n * 4) as f64 / best / 1e9,
        bytes: n * 4,
        passes,
        threads,
    }
}

fn read_all(buf: &[f32], isa: Isa) -> f32 {
    match isa {
        // SAFETY: the ISA was detected by the caller's kernels; lengths are multiples of 64 floats per stream.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_supported() => unsafe { x86::read_avx512(buf) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_supported() => unsafe { x86::read_avx2(buf) },
        _ => read_portable(buf),
    }
}

fn read_portable(buf: &[f32]) -> f32 {
    let len = buf.len() / STREAMS;
    let streams: Vec<&[f32]> = buf.chunks_exact(len).collect();
    let mut acc = [[0.0f32; 8]; STREAMS];
    for i in (0..len).step_by(8) {
        for (a, s) in acc.iter_mut().zip(&streams) {
            for l in 0..8 {
                a[l] += s[i + l];
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::STREAMS;
    use core::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn read_avx512(buf: &[f32]) -> f32 {
        let len = buf.len() / STREAMS;
        let p = buf.as_ptr();
        let mut acc = [_mm512_setzero_ps(); STREAMS * 2];
        let mut i = 0;
        while i < len {
            for s in 0..STREAMS {
                let q = p.add(s * len + i);
                acc[2 * s] = _mm512_add_ps(acc[2 * s], _mm512_load_ps(q));
                acc[2 * s + 1] = _mm512_add_ps(acc[2 * s + 1], _mm512_load_ps(q.add(16)));
            }
            i += 32;
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn read_avx2(buf: &[f32]) -> f32 {
        let len = buf.len() / STREAMS;
        let p = buf.as_ptr();
        let mut acc = [_mm256_setzero_ps(); STREAMS * 2];
        let mut i = 0;
        while i < len {
            for s in 0..STREAMS {
                let q = p.add(s * len + i);
                acc[2 * s] = _mm256_add_ps(acc[2 * s], _mm256_load_ps(q));
                acc[2 * s + 1] = _mm256_add_ps(acc[2 * s + 1], _mm256_load_ps(q.add(8)));
            }
            i += 16;
        }
        let mut out = [0.0f32; 8];
        let total = acc
            .iter()
            .fold(_mm256_setzero_ps(), |a, &v| _mm256_add_ps(a, v));
        _mm256_storeu_ps(out.as_mut_ptr(), total);
        out.iter().sum()
    }
}

/// Latency percentiles of a run, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// Nearest-rank percentiles of `samples_ms` (any order; at least one sample).
pub fn percentiles(samples_ms: &[f64]) -> Percentiles {
    let mut s = samples_ms.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((p / 100.0 * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    Percentiles {
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: s[s.len() - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_reads_the_same_sum() {
        let n = STREAMS * 64 * 10;
        let mut buf = AlignedVec::zeros(n);
        let mut rng = crate::base::rng::Rng::new(9);
        buf.iter_mut().for_each(|v| *v = rng.uniform());
        let want: f64 = buf.iter().map(|&v| v as f64).sum();
        for &isa in Isa::all().iter().filter(|i| i.is_supported()) {
            let got = read_all(&buf, isa) as f64;
            assert!((got - want).abs() < 1e-2, "{isa}: {got} vs {want}");
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = percentiles(&v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let p = percentiles(&[3.0]);
        assert_eq!((p.p50, p.max), (3.0, 3.0));
    }
}
