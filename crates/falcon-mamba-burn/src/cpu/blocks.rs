//! The accumulate routine of the row formats (Q8_0, Q4_0, bitsandbytes 4-bit): weights in
//! PyTorch's `[out, in]` rows, blocked along the input, so each output is a dot product of one
//! row with the input. A block's weights are widened to f32 in registers once and multiplied
//! into every input row; the activations stay f32 (quantising them too, as llama.cpp's kernels
//! do, would move the logits by far more than the 1e-4 the parity tests allow against the f32
//! model on the dequantized weights, and a decode step is bound by the weight bytes anyway).
//!
//! On x86-64 the Q8_0 and Q4_0 blocks run on AVX-512 (16 lanes) or AVX2 + FMA + F16C (8 lanes);
//! everything else on the portable loop. Each output's block sums are added in block order;
//! the lanes are added at the end of the row, so the vector paths round differently from the
//! portable one (the tests hold all of them to an f64 reference).

use std::ops::Range;

use falcon_mamba_core::quant::{Q4_0_BYTES, Q8_0_BYTES};
use falcon_mamba_core::{BlockFormat, Bnb4Matrix};

use super::matrix::KernelPath;

/// Input rows multiplied per pass over a weight row.
const ROWS: usize = 4;

/// One accumulate call's operands: `acc` `[rows, outputs.len()]` += `x[:, inputs]` ·
/// `W[outputs, inputs]ᵀ`, `x` `[rows, x_stride]`; `inputs` starts on a block boundary.
pub(super) struct RowJob<'a> {
    pub acc: &'a mut [f32],
    pub x: &'a [f32],
    pub x_stride: usize,
    pub inputs: Range<usize>,
    pub outputs: Range<usize>,
}

impl RowJob<'_> {
    fn rows(&self) -> usize {
        self.acc.len() / self.outputs.len().max(1)
    }
}

/// The row-dot accumulate over `bytes` in `format` (rows of `d_in` inputs).
pub(super) fn accumulate_blocks(
    path: KernelPath,
    format: BlockFormat,
    bytes: &[u8],
    d_in: usize,
    job: RowJob<'_>,
) {
    let row_bytes = format.row_bytes(d_in);
    debug_assert_eq!(job.inputs.start % BLOCK, 0);
    #[cfg(target_arch = "x86_64")]
    {
        let isa = super::matrix::isa_for(path);
        // SAFETY (both arms): `isa_for` checked that the CPU has the features.
        match (isa, format) {
            (super::matrix::Isa::Avx512, BlockFormat::Q8_0) => unsafe {
                return simd::run_avx512::<simd::Q8>(bytes, row_bytes, job);
            },
            (super::matrix::Isa::Avx512, BlockFormat::Q4_0) => unsafe {
                return simd::run_avx512::<simd::Q4>(bytes, row_bytes, job);
            },
            (super::matrix::Isa::Avx2, BlockFormat::Q8_0) => unsafe {
                return simd::run_avx2::<simd::Q8>(bytes, row_bytes, job);
            },
            (super::matrix::Isa::Avx2, BlockFormat::Q4_0) => unsafe {
                return simd::run_avx2::<simd::Q4>(bytes, row_bytes, job);
            },
            _ => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    let block_bytes = format.block_bytes();
    portable_dot(job, BLOCK, |o, b, out: &mut [f32]| {
        let at = o * row_bytes + b * block_bytes;
        let block = &bytes[at..at + block_bytes];
        match format {
            BlockFormat::Q8_0 => falcon_mamba_core::quant::dequantize_q8_0(block, out),
            BlockFormat::Q4_0 => falcon_mamba_core::quant::dequantize_q4_0(block, out),
        }
    });
}

/// Weights per Q8_0/Q4_0 block.
const BLOCK: usize = falcon_mamba_core::quant::BLOCK;

/// The row-dot accumulate over a bitsandbytes matrix (blocks within rows), portable.
pub(super) fn accumulate_bnb4(m: &Bnb4Matrix, job: RowJob<'_>) {
    let d_in = m.d_in;
    portable_dot(job, m.block, |o, b, out: &mut [f32]| {
        let first = o * d_in + b * m.block;
        let absmax = m.absmax[first / m.block];
        for (j, w) in out.iter_mut().enumerate() {
            *w = m.dtype.round(m.table[m.code(first + j)] * absmax);
        }
    });
}

/// The portable row dot: `weights(o, b, out)` writes block `b` of row `o` dequantized; each
/// block's products are summed, then added to the output in block order.
fn portable_dot(job: RowJob<'_>, block: usize, mut weights: impl FnMut(usize, usize, &mut [f32])) {
    let rows = job.rows();
    let RowJob {
        acc,
        x,
        x_stride,
        inputs,
        outputs,
    } = job;
    let width = outputs.len();
    let mut w = vec![0.0f32; block];
    for (j, o) in outputs.enumerate() {
        let mut sums = vec![0.0f32; rows];
        for start in (inputs.start..inputs.end).step_by(block) {
            let n = block.min(inputs.end - start);
            weights(o, start / block, &mut w);
            for (m, sum) in sums.iter_mut().enumerate() {
                let xs = &x[m * x_stride + start..m * x_stride + start + n];
                *sum += w.iter().zip(xs).map(|(w, x)| w * x).sum::<f32>();
            }
        }
        for (m, sum) in sums.into_iter().enumerate() {
            acc[m * width + j] += sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! Q8_0 and Q4_0 row dots on explicit vectors: one kernel body for 8 and 16 lanes. A block
    //! is widened to f32 vectors once, multiplied into up to [`super::ROWS`] input rows, and
    //! each row's block sum scaled by the block's f16 scale into a per-lane running sum.

    use std::arch::x86_64::*;

    use super::{RowJob, BLOCK, ROWS};

    /// A vector width, and how it widens each block format.
    pub(super) trait Isa {
        type V: Copy;
        /// The block's 32 weights as f32 vectors (`BLOCK / LANES` of them).
        type W: Copy;
        unsafe fn zero() -> Self::V;
        unsafe fn splat(x: f32) -> Self::V;
        /// `Σ w · x[0..32]` lane-wise.
        unsafe fn dot(w: Self::W, x: *const f32) -> Self::V;
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
        unsafe fn sum(v: Self::V) -> f32;
        unsafe fn widen_q8(q: *const u8) -> Self::W;
        unsafe fn widen_q4(q: *const u8) -> Self::W;
    }

    /// A block format as the kernels see it.
    pub(super) trait Format {
        const BYTES: usize;
        unsafe fn widen<I: Isa>(q: *const u8) -> I::W;
    }

    pub(super) struct Q8;
    pub(super) struct Q4;

    impl Format for Q8 {
        const BYTES: usize = super::Q8_0_BYTES;
        #[inline(always)]
        unsafe fn widen<I: Isa>(q: *const u8) -> I::W {
            unsafe { I::widen_q8(q) }
        }
    }

    impl Format for Q4 {
        const BYTES: usize = super::Q4_0_BYTES;
        #[inline(always)]
        unsafe fn widen<I: Isa>(q: *const u8) -> I::W {
            unsafe { I::widen_q4(q) }
        }
    }

    pub(super) struct Avx2;
    pub(super) struct Avx512;

    impl Isa for Avx512 {
        type V = __m512;
        type W = [__m512; 2];
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn dot(w: [__m512; 2], x: *const f32) -> __m512 {
            unsafe {
                let lo = _mm512_mul_ps(w[0], _mm512_loadu_ps(x));
                _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x.add(16)), lo)
            }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn widen_q8(q: *const u8) -> [__m512; 2] {
            unsafe {
                let half = |p: *const u8| {
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
                };
                [half(q), half(q.add(16))]
            }
        }
        #[inline(always)]
        unsafe fn widen_q4(q: *const u8) -> [__m512; 2] {
            unsafe {
                let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(q.cast()));
                let eight = _mm512_set1_epi32(8);
                let lo = _mm512_sub_epi32(_mm512_and_si512(bytes, _mm512_set1_epi32(0xF)), eight);
                let hi = _mm512_sub_epi32(_mm512_srli_epi32::<4>(bytes), eight);
                [_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi)]
            }
        }
    }

    impl Isa for Avx2 {
        type V = __m256;
        type W = [__m256; 4];
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn dot(w: [__m256; 4], x: *const f32) -> __m256 {
            unsafe {
                let mut s = _mm256_mul_ps(w[0], _mm256_loadu_ps(x));
                s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x.add(8)), s);
                s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x.add(16)), s);
                _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x.add(24)), s)
            }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn widen_q8(q: *const u8) -> [__m256; 4] {
            unsafe {
                let part = |p: *const u8| {
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
                };
                [part(q), part(q.add(8)), part(q.add(16)), part(q.add(24))]
            }
        }
        #[inline(always)]
        unsafe fn widen_q4(q: *const u8) -> [__m256; 4] {
            unsafe {
                let eight = _mm256_set1_epi32(8);
                let mask = _mm256_set1_epi32(0xF);
                let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.cast()));
                let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.add(8).cast()));
                let lo = |v| _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, mask), eight));
                let hi = |v| _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32::<4>(v), eight));
                [lo(a), lo(b), hi(a), hi(b)]
            }
        }
    }

    /// A block's f16 scale, through F16C.
    #[inline(always)]
    unsafe fn scale(q: *const u8) -> f32 {
        unsafe {
            let bits = u16::from_le_bytes([*q, *q.add(1)]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `bytes` holds whole rows of `row_bytes`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run_avx2<F: Format>(bytes: &[u8], row_bytes: usize, job: RowJob<'_>) {
        unsafe { run::<Avx2, F>(bytes, row_bytes, job) }
    }

    /// # Safety
    /// The CPU must have AVX-512 F and BW, FMA and F16C; `bytes` as above.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub(super) unsafe fn run_avx512<F: Format>(bytes: &[u8], row_bytes: usize, job: RowJob<'_>) {
        unsafe { run::<Avx512, F>(bytes, row_bytes, job) }
    }

    #[inline(always)]
    unsafe fn run<I: Isa, F: Format>(bytes: &[u8], row_bytes: usize, job: RowJob<'_>) {
        let rows = job.rows();
        let RowJob {
            acc,
            x,
            x_stride,
            inputs,
            outputs,
        } = job;
        let width = outputs.len();
        let first = inputs.start / BLOCK;
        let whole = (inputs.end - inputs.start) / BLOCK;
        assert!(outputs.end * row_bytes <= bytes.len());
        assert!(rows == 0 || (rows - 1) * x_stride + inputs.start + whole * BLOCK <= x.len());
        debug_assert_eq!((inputs.end - inputs.start) % BLOCK, 0);
        let mut m0 = 0;
        while m0 < rows {
            let n = ROWS.min(rows - m0);
            let xs: [*const f32; ROWS] = std::array::from_fn(|m| {
                x[(m0 + m.min(n - 1)) * x_stride + inputs.start..].as_ptr()
            });
            for (j, o) in outputs.clone().enumerate() {
                // SAFETY: row `o` lies in `bytes` and every x row holds `whole` blocks from
                // `inputs.start` (asserted above); the features are enabled by the caller.
                let sums = unsafe {
                    let row = bytes.as_ptr().add(o * row_bytes + first * F::BYTES);
                    // Two running sums per input row (even and odd blocks): the scaled adds
                    // are the only dependency chain, and two halve its length.
                    let mut even = [I::zero(); ROWS];
                    let mut odd = [I::zero(); ROWS];
                    let block = |b: usize, sums: &mut [I::V; ROWS]| {
                        let q = row.add(b * F::BYTES);
                        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(1024).cast());
                        let d = I::splat(scale(q));
                        let w = F::widen::<I>(q.add(2));
                        for m in 0..ROWS {
                            if m < n {
                                let t = I::dot(w, xs[m].add(b * BLOCK));
                                sums[m] = I::fmadd(d, t, sums[m]);
                            }
                        }
                    };
                    for b in (0..whole - whole % 2).step_by(2) {
                        block(b, &mut even);
                        block(b + 1, &mut odd);
                    }
                    if whole % 2 == 1 {
                        block(whole - 1, &mut even);
                    }
                    std::array::from_fn::<_, ROWS, _>(|m| I::add(even[m], odd[m]))
                };
                for m in 0..n {
                    // SAFETY: as above.
                    acc[(m0 + m) * width + j] += unsafe { I::sum(sums[m]) };
                }
            }
            m0 += n;
        }
    }
}
