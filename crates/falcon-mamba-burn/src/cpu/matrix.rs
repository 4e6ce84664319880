//! [`HostMatrix`]: the CPU backend's weight matrix, in the library's own host buffers
//! (burn-ndarray has no bf16 or f16 tensors), and the one accumulate routine per format that the
//! op-by-op projections and the fused decode step share.
//!
//! The routine is an axpy over `[in, out]` rows: every weight row segment is read once, widened
//! to f32 in registers (bf16 by a 16-bit shift, f16 through F16C) and added, scaled, to every
//! input row's accumulator. On x86-64 with AVX2 + FMA (+ F16C) it runs on explicit 8-lane
//! vectors; elsewhere on a portable loop. Both add in the same order, so a path differs from
//! the other only by FMA's single rounding.

use std::ops::Range;
use std::sync::Arc;

use falcon_mamba_core::{WeightData, WeightFormat, WeightMatrix};

use super::scan::madd;
use crate::ops::Matrix;

/// A weight matrix `[d_in, d_out]` in host memory, in its format. Clones share the buffer.
#[derive(Debug, Clone)]
pub struct HostMatrix {
    d_in: usize,
    d_out: usize,
    values: Values,
}

#[derive(Debug, Clone)]
enum Values {
    F32(Arc<[f32]>),
    Bf16(Arc<[u16]>),
    F16(Arc<[u16]>),
}

impl Matrix for HostMatrix {
    fn d_in(&self) -> usize {
        self.d_in
    }
    fn d_out(&self) -> usize {
        self.d_out
    }
    fn format(&self) -> WeightFormat {
        match self.values {
            Values::F32(_) => WeightFormat::F32,
            Values::Bf16(_) => WeightFormat::Bf16,
            Values::F16(_) => WeightFormat::F16,
        }
    }
}

impl From<WeightMatrix> for HostMatrix {
    fn from(m: WeightMatrix) -> Self {
        let values = match m.data {
            WeightData::F32(v) => Values::F32(v.into()),
            WeightData::Bf16(v) => Values::Bf16(v.into()),
            WeightData::F16(v) => Values::F16(v.into()),
        };
        HostMatrix {
            d_in: m.d_in,
            d_out: m.d_out,
            values,
        }
    }
}

/// Which code the kernels run: the best the CPU has, or the portable loop (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// AVX2 + FMA + F16C where the CPU has them, else portable.
    Detected,
    /// Plain Rust, any CPU.
    Portable,
}

impl HostMatrix {
    /// Whether the values sit in one contiguous buffer of `d_in * d_out` (always, once built).
    pub(crate) fn len_matches(&self) -> bool {
        let len = match &self.values {
            Values::F32(v) => v.len(),
            Values::Bf16(v) | Values::F16(v) => v.len(),
        };
        len == self.d_in * self.d_out
    }

    /// Rows `rows` widened to f32 into `out` (`[rows.len(), d_out]`).
    pub(crate) fn widen_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        let range = rows.start * self.d_out..rows.end * self.d_out;
        match &self.values {
            Values::F32(v) => out.copy_from_slice(&v[range]),
            Values::Bf16(v) => widen_into(&v[range], out, bf16_to_f32),
            Values::F16(v) => widen_into(&v[range], out, f16_to_f32),
        }
    }

    /// Column `column` (one embedding) widened to f32 into `out` (`[d_in]`).
    pub(crate) fn column(&self, column: usize, out: &mut [f32]) {
        let at = (0..self.d_in).map(|r| r * self.d_out + column);
        match &self.values {
            Values::F32(v) => out.iter_mut().zip(at).for_each(|(o, i)| *o = v[i]),
            Values::Bf16(v) => out
                .iter_mut()
                .zip(at)
                .for_each(|(o, i)| *o = bf16_to_f32(v[i])),
            Values::F16(v) => out
                .iter_mut()
                .zip(at)
                .for_each(|(o, i)| *o = f16_to_f32(v[i])),
        }
    }

    /// The f32 values, when that is the format (for the blocked matmul, which reads them as is).
    pub(crate) fn as_f32(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Adds `x[:, inputs] @ self[inputs, outputs]` to `acc` (`[rows, outputs.len()]`), for `x`
    /// `[rows, x_stride]` whose column `i` feeds weight row `i`.
    pub(crate) fn accumulate(
        &self,
        acc: &mut [f32],
        x: &[f32],
        x_stride: usize,
        inputs: Range<usize>,
        outputs: Range<usize>,
    ) {
        self.accumulate_on(KernelPath::Detected, acc, x, x_stride, inputs, outputs)
    }

    /// [`HostMatrix::accumulate`] on the given code path.
    pub fn accumulate_on(
        &self,
        path: KernelPath,
        acc: &mut [f32],
        x: &[f32],
        x_stride: usize,
        inputs: Range<usize>,
        outputs: Range<usize>,
    ) {
        let job = Job {
            acc,
            x,
            x_stride,
            d_out: self.d_out,
            inputs,
            outputs,
        };
        #[cfg(target_arch = "x86_64")]
        if path == KernelPath::Detected && has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C, checked just above.
            unsafe {
                match &self.values {
                    Values::F32(w) => avx2::accumulate::<avx2::F32, _>(job, w),
                    Values::Bf16(w) => avx2::accumulate::<avx2::Bf16, _>(job, w),
                    Values::F16(w) => avx2::accumulate::<avx2::F16, _>(job, w),
                }
            }
            return;
        }
        let _ = path;
        match &self.values {
            Values::F32(w) => portable(job, w, |v: f32| v),
            Values::Bf16(w) => portable(job, w, bf16_to_f32),
            Values::F16(w) => portable(job, w, f16_to_f32),
        }
    }
}

/// One accumulate call's operands.
struct Job<'a> {
    acc: &'a mut [f32],
    x: &'a [f32],
    x_stride: usize,
    d_out: usize,
    inputs: Range<usize>,
    outputs: Range<usize>,
}

#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

#[inline(always)]
fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

fn widen_into<T: Copy>(src: &[T], out: &mut [f32], widen: impl Fn(T) -> f32) {
    out.iter_mut().zip(src).for_each(|(o, &v)| *o = widen(v));
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// The portable accumulate: four weight rows per pass over the accumulators (a quarter of the
/// accumulator traffic, four read streams in flight); each accumulator still adds the rows in
/// input order.
fn portable<T: Copy>(job: Job<'_>, w: &[T], widen: impl Fn(T) -> f32) {
    let Job {
        acc,
        x,
        x_stride,
        d_out,
        inputs,
        outputs,
    } = job;
    let width = outputs.len();
    if width == 0 {
        return;
    }
    let row = |i: usize| &w[i * d_out + outputs.start..i * d_out + outputs.end];
    let mut i = inputs.start;
    while i + 4 <= inputs.end {
        let (w0, w1, w2, w3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
        for (m, acc) in acc.chunks_exact_mut(width).enumerate() {
            let xs = &x[m * x_stride + i..m * x_stride + i + 4];
            let weights = w0.iter().zip(w1).zip(w2).zip(w3);
            for (a, (((w0, w1), w2), w3)) in acc.iter_mut().zip(weights) {
                let mut sum = *a;
                sum = madd::<false>(xs[0], widen(*w0), sum);
                sum = madd::<false>(xs[1], widen(*w1), sum);
                sum = madd::<false>(xs[2], widen(*w2), sum);
                sum = madd::<false>(xs[3], widen(*w3), sum);
                *a = sum;
            }
        }
        i += 4;
    }
    for i in i..inputs.end {
        let w_row = row(i);
        for (m, acc) in acc.chunks_exact_mut(width).enumerate() {
            let xv = x[m * x_stride + i];
            for (a, wv) in acc.iter_mut().zip(w_row) {
                *a = madd::<false>(xv, widen(*wv), *a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The accumulate on 8-lane AVX2 vectors with fused multiply-adds.

    use std::arch::x86_64::*;

    use super::Job;

    /// A weight element type: how 8 of them load as 8 f32 lanes, and one as a scalar.
    pub(super) trait Element: Copy {
        /// # Safety
        /// `p` must point at 8 readable elements; the CPU must have AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
        fn widen(self) -> f32;
    }

    pub(super) type F32 = f32;
    pub(super) type Bf16 = BfBits;
    pub(super) type F16 = HalfBits;

    /// A bfloat16 bit pattern.
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    pub(super) struct BfBits(u16);
    /// An IEEE half bit pattern.
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    pub(super) struct HalfBits(u16);

    impl Element for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            self
        }
    }

    impl Element for BfBits {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            let halves = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            super::bf16_to_f32(self.0)
        }
    }

    impl Element for HalfBits {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            super::f16_to_f32(self.0)
        }
    }

    /// Reinterprets the buffer's elements as `E` (same size and layout: `E` is `f32` or a
    /// transparent `u16`).
    fn cast<T, E>(w: &[T]) -> &[E] {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<E>());
        assert_eq!(std::mem::align_of::<T>(), std::mem::align_of::<E>());
        // SAFETY: same size and alignment, asserted above; every bit pattern is valid for both.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len()) }
    }

    /// See [`super::HostMatrix::accumulate`].
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn accumulate<E: Element, T>(job: Job<'_>, w: &[T]) {
        let w: &[E] = cast(w);
        let Job {
            acc,
            x,
            x_stride,
            d_out,
            inputs,
            outputs,
        } = job;
        let width = outputs.len();
        if width == 0 {
            return;
        }
        let vectors = width / 8 * 8;
        let row = |i: usize| &w[i * d_out + outputs.start..i * d_out + outputs.end];
        let mut i = inputs.start;
        while i + 4 <= inputs.end {
            let (w0, w1, w2, w3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
            for (m, acc) in acc.chunks_exact_mut(width).enumerate() {
                let xs = &x[m * x_stride + i..m * x_stride + i + 4];
                let (x0, x1, x2, x3) = (
                    _mm256_set1_ps(xs[0]),
                    _mm256_set1_ps(xs[1]),
                    _mm256_set1_ps(xs[2]),
                    _mm256_set1_ps(xs[3]),
                );
                for j in (0..vectors).step_by(8) {
                    // SAFETY: j + 8 <= vectors <= width, the length of every row slice and acc.
                    unsafe {
                        let a = acc.as_mut_ptr().add(j);
                        let mut sum = _mm256_loadu_ps(a);
                        sum = _mm256_fmadd_ps(x0, E::load8(w0.as_ptr().add(j)), sum);
                        sum = _mm256_fmadd_ps(x1, E::load8(w1.as_ptr().add(j)), sum);
                        sum = _mm256_fmadd_ps(x2, E::load8(w2.as_ptr().add(j)), sum);
                        sum = _mm256_fmadd_ps(x3, E::load8(w3.as_ptr().add(j)), sum);
                        _mm256_storeu_ps(a, sum);
                    }
                }
                for j in vectors..width {
                    let mut sum = acc[j];
                    sum = xs[0].mul_add(w0[j].widen(), sum);
                    sum = xs[1].mul_add(w1[j].widen(), sum);
                    sum = xs[2].mul_add(w2[j].widen(), sum);
                    sum = xs[3].mul_add(w3[j].widen(), sum);
                    acc[j] = sum;
                }
            }
            i += 4;
        }
        for i in i..inputs.end {
            let w_row = row(i);
            for (m, acc) in acc.chunks_exact_mut(width).enumerate() {
                let xv = x[m * x_stride + i];
                let xb = _mm256_set1_ps(xv);
                for j in (0..vectors).step_by(8) {
                    // SAFETY: as above.
                    unsafe {
                        let a = acc.as_mut_ptr().add(j);
                        let sum = _mm256_fmadd_ps(
                            xb,
                            E::load8(w_row.as_ptr().add(j)),
                            _mm256_loadu_ps(a),
                        );
                        _mm256_storeu_ps(a, sum);
                    }
                }
                for j in vectors..width {
                    acc[j] = xv.mul_add(w_row[j].widen(), acc[j]);
                }
            }
        }
    }
}
