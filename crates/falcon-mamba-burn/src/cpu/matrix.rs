//! [`HostMatrix`]: the CPU backend's weight matrix, in the library's own host buffers
//! (burn-ndarray has no bf16 or f16 tensors), and the one accumulate routine per format that the
//! op-by-op projections and the fused decode step share.
//!
//! The quantized formats (Q8_0, Q4_0, bitsandbytes 4-bit) have theirs in [`super::blocks`]. For
//! the float formats the routine is an axpy over `[in, out]` rows: every weight row segment is
//! read once, widened to f32 in registers (bf16 by a 16-bit shift, f16 through F16C) and added,
//! scaled, to every input row's accumulator. On x86-64 with AVX2 + FMA + F16C it runs on explicit 8-lane vectors,
//! 16-lane where the CPU has AVX-512 (the same bits: every lane adds the same products in the
//! same order); elsewhere on a portable loop, which differs only by rounding each product
//! before adding it.

use std::ops::Range;
use std::sync::Arc;

use falcon_mamba_core::quant::BLOCK;
use falcon_mamba_core::{BlockFormat, Bnb4Matrix, WeightData, WeightFormat, WeightMatrix};

use super::blocks::{self, RowJob, Tiles};
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
    /// `[d_in, d_out]`.
    F32(Arc<[f32]>),
    /// `[d_in, d_out]`.
    Bf16(Arc<[u16]>),
    /// `[d_in, d_out]`.
    F16(Arc<[u16]>),
    /// Q8_0/Q4_0 blocks of `[out, in]` in tile order ([`Tiles`]).
    Blocks(Tiles, Arc<[u8]>),
    /// bitsandbytes' own `[out, in]` layout.
    Bnb4(Arc<Bnb4Matrix>),
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
            Values::Blocks(p, _) => match p.format {
                BlockFormat::Q8_0 => WeightFormat::Q8,
                BlockFormat::Q4_0 => WeightFormat::Q4,
            },
            Values::Bnb4(_) => WeightFormat::Bnb4,
        }
    }
    fn bytes(&self) -> usize {
        match &self.values {
            Values::F32(v) => 4 * v.len(),
            Values::Bf16(v) | Values::F16(v) => 2 * v.len(),
            Values::Blocks(_, b) => b.len(),
            Values::Bnb4(m) => m.bytes(),
        }
    }
}

impl From<WeightMatrix> for HostMatrix {
    fn from(m: WeightMatrix) -> Self {
        let values = match m.data {
            WeightData::F32(v) => Values::F32(v.into()),
            WeightData::Bf16(v) => Values::Bf16(v.into()),
            WeightData::F16(v) => Values::F16(v.into()),
            WeightData::Q8(rows) => {
                let tiles = Tiles::new(BlockFormat::Q8_0, m.d_out, m.d_in);
                Values::Blocks(tiles, tiles.tile_rows(&rows).into())
            }
            WeightData::Q4(rows) => {
                let tiles = Tiles::new(BlockFormat::Q4_0, m.d_out, m.d_in);
                Values::Blocks(tiles, tiles.tile_rows(&rows).into())
            }
            WeightData::Bnb4(m) => Values::Bnb4(Arc::new(m)),
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
    /// The widest the CPU has: AVX-512, else AVX2 + FMA + F16C, else portable.
    Detected,
    /// AVX2 + FMA + F16C where the CPU has them (even if it has AVX-512), else portable.
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl HostMatrix {
    /// Whether the values fill their buffer exactly (always, once built).
    pub(crate) fn len_matches(&self) -> bool {
        let (d_in, d_out) = (self.d_in, self.d_out);
        match &self.values {
            Values::F32(v) => v.len() == d_in * d_out,
            Values::Bf16(v) | Values::F16(v) => v.len() == d_in * d_out,
            Values::Blocks(p, b) => {
                d_in % BLOCK == 0
                    && p.d_out == d_out
                    && p.blocks * BLOCK == d_in
                    && b.len() == p.len()
            }
            Values::Bnb4(m) => m.d_in == d_in && m.d_out == d_out && d_in % m.block == 0,
        }
    }

    /// Whether the matrix is laid out `[out, in]` (the row formats): the blocked matmul then
    /// widens tiles of output rows ([`HostMatrix::widen_outputs`]) rather than input rows.
    pub(crate) fn by_outputs(&self) -> bool {
        matches!(self.values, Values::Blocks(..) | Values::Bnb4(_))
    }

    /// Input rows `rows` of a `[d_in, d_out]` float matrix widened to f32 into `out`
    /// (`[rows.len(), d_out]`).
    pub(crate) fn widen_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        let range = rows.start * self.d_out..rows.end * self.d_out;
        match &self.values {
            Values::F32(v) => out.copy_from_slice(&v[range]),
            Values::Bf16(v) => widen_into(&v[range], out, bf16_to_f32),
            Values::F16(v) => widen_into(&v[range], out, f16_to_f32),
            Values::Blocks(..) | Values::Bnb4(_) => {
                unreachable!("row formats widen by outputs")
            }
        }
    }

    /// Output rows `outputs` of a row-format matrix dequantized into `out` (`[outputs.len(),
    /// d_in]`).
    pub(crate) fn widen_outputs(&self, outputs: Range<usize>, out: &mut [f32]) {
        let d_in = self.d_in;
        for (o, row) in outputs.zip(out.chunks_exact_mut(d_in)) {
            self.dequantize_output(o, row);
        }
    }

    /// Output row `o` of a row-format matrix, dequantized into `out` (`[d_in]`).
    fn dequantize_output(&self, o: usize, out: &mut [f32]) {
        match &self.values {
            Values::Blocks(p, b) => p.dequantize_row(b, o, out),
            Values::Bnb4(m) => {
                let first = o * m.d_in;
                out.iter_mut()
                    .enumerate()
                    .for_each(|(j, w)| *w = m.weight(first + j));
            }
            _ => unreachable!("float formats are laid out by inputs"),
        }
    }

    /// Column `column` (one embedding) widened to f32 into `out` (`[d_in]`).
    pub(crate) fn column(&self, column: usize, out: &mut [f32]) {
        self.columns_part(&[column], 0..self.d_in, out);
    }

    /// Rows `rows` of each of `columns`, widened to f32 into `out` (`[columns.len(),
    /// rows.len()]`). The columns are read side by side, row by row: in a float format each
    /// value is a page of its own, and the columns' values of one row share page-table lines.
    pub(crate) fn columns_part(&self, columns: &[usize], rows: Range<usize>, out: &mut [f32]) {
        let d_out = self.d_out;
        match &self.values {
            Values::F32(v) => gather_columns(v, d_out, columns, rows, out, |v| v),
            Values::Bf16(v) => gather_columns(v, d_out, columns, rows, out, bf16_to_f32),
            Values::F16(v) => gather_columns(v, d_out, columns, rows, out, f16_to_f32),
            Values::Blocks(..) | Values::Bnb4(_) => {
                let (mut whole, len) = (vec![0.0; self.d_in], rows.len());
                for (k, &column) in columns.iter().enumerate() {
                    self.dequantize_output(column, &mut whole);
                    out[k * len..(k + 1) * len].copy_from_slice(&whole[rows.clone()]);
                }
            }
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
        match &self.values {
            Values::Blocks(tiles, bytes) => {
                let job = RowJob {
                    acc,
                    x,
                    x_stride,
                    inputs,
                    outputs,
                };
                return blocks::accumulate_blocks(path, *tiles, bytes, job);
            }
            Values::Bnb4(m) => {
                let job = RowJob {
                    acc,
                    x,
                    x_stride,
                    inputs,
                    outputs,
                };
                return blocks::accumulate_bnb4(m, job);
            }
            _ => {}
        }
        let job = Job {
            acc,
            x,
            x_stride,
            d_out: self.d_out,
            inputs,
            outputs,
        };
        #[cfg(target_arch = "x86_64")]
        {
            use simd::{cast, Bf16, F16};
            // SAFETY (both arms): `isa_for` checked that the CPU has the features.
            match isa_for(path) {
                Isa::Avx512 => unsafe {
                    match &self.values {
                        Values::F32(w) => simd::accumulate_avx512::<f32>(job, w),
                        Values::Bf16(w) => simd::accumulate_avx512::<Bf16>(job, cast(w)),
                        Values::F16(w) => simd::accumulate_avx512::<F16>(job, cast(w)),
                        Values::Blocks(..) | Values::Bnb4(_) => {}
                    }
                    return;
                },
                Isa::Avx2 => unsafe {
                    match &self.values {
                        Values::F32(w) => simd::accumulate_avx2::<f32>(job, w),
                        Values::Bf16(w) => simd::accumulate_avx2::<Bf16>(job, cast(w)),
                        Values::F16(w) => simd::accumulate_avx2::<F16>(job, cast(w)),
                        Values::Blocks(..) | Values::Bnb4(_) => {}
                    }
                    return;
                },
                Isa::Portable => {}
            }
        }
        // Elsewhere there is only the portable path.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = path;
        match &self.values {
            Values::F32(w) => portable(job, w, |v: f32| v),
            Values::Bf16(w) => portable(job, w, bf16_to_f32),
            Values::F16(w) => portable(job, w, f16_to_f32),
            Values::Blocks(..) | Values::Bnb4(_) => {}
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

/// [`HostMatrix::columns_part`] of a float format's `[d_in, d_out]` values.
fn gather_columns<T: Copy>(
    values: &[T],
    d_out: usize,
    columns: &[usize],
    rows: Range<usize>,
    out: &mut [f32],
    widen: impl Fn(T) -> f32,
) {
    let len = rows.len();
    for (j, r) in rows.enumerate() {
        for (k, &column) in columns.iter().enumerate() {
            out[k * len + j] = widen(values[r * d_out + column]);
        }
    }
}

fn widen_into<T: Copy>(src: &[T], out: &mut [f32], widen: impl Fn(T) -> f32) {
    out.iter_mut().zip(src).for_each(|(o, &v)| *o = widen(v));
}

/// The widest vector code the CPU runs.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The code `path` runs on this CPU.
#[cfg(target_arch = "x86_64")]
pub(super) fn isa_for(path: KernelPath) -> Isa {
    match (path, detected_isa()) {
        (KernelPath::Portable, _) => Isa::Portable,
        (KernelPath::Avx2, Isa::Avx512) => Isa::Avx2,
        (_, isa) => isa,
    }
}

#[cfg(target_arch = "x86_64")]
fn detected_isa() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma") && has!("f16c")) {
        Isa::Portable
    } else if has!("avx512f") && has!("avx512bw") {
        Isa::Avx512
    } else {
        Isa::Avx2
    }
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
mod simd {
    //! The accumulate on explicit vectors with fused multiply-adds: 8 lanes (AVX2) or 16
    //! (AVX-512), one kernel body for both. Each accumulator still adds the weight rows in input
    //! order with one rounding per row, so both widths give the same bits.

    use std::arch::x86_64::*;

    use std::ops::Range;

    use super::Job;

    /// Weight rows per pass over the accumulators: one load and store of each accumulator per
    /// eight rows, and eight read streams in flight.
    const ROWS: usize = 8;

    /// How far ahead of the loads each weight row is prefetched, in elements. Short rows (the
    /// hardware prefetcher loses track of eight streams that end every few KiB) prefetch the
    /// same place in the next pass's rows instead.
    const PREFETCH: usize = 512;
    /// Rows up to this many elements are short.
    const SHORT_ROW: usize = 2048;

    /// A vector width.
    pub(super) trait Isa {
        type V: Copy;
        const LANES: usize;
        /// Whether several activation rows share each weight load ([`pass_rows`]): their sums
        /// live in registers, which only AVX-512's 32 registers hold.
        const ROW_GROUPS: bool;
        unsafe fn splat(x: f32) -> Self::V;
        unsafe fn load(p: *const f32) -> Self::V;
        unsafe fn store(p: *mut f32, v: Self::V);
        /// `a * b + c`, one rounding.
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    }

    /// A weight element type: how a vector of them loads as f32 lanes, and one as a scalar.
    pub(super) trait Element<I: Isa>: Copy {
        /// # Safety
        /// `p` must point at `I::LANES` readable elements; the CPU must have the ISA.
        unsafe fn load(p: *const Self) -> I::V;
        fn widen(self) -> f32;
    }

    pub(super) struct Avx2;
    pub(super) struct Avx512;

    impl Isa for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        const ROW_GROUPS: bool = false;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
    }

    impl Isa for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        const ROW_GROUPS: bool = true;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
    }

    /// A bfloat16 bit pattern.
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    pub(super) struct Bf16(u16);
    /// An IEEE half bit pattern.
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    pub(super) struct F16(u16);

    impl Element<Avx2> for f32 {
        #[inline(always)]
        unsafe fn load(p: *const Self) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            self
        }
    }

    impl Element<Avx512> for f32 {
        #[inline(always)]
        unsafe fn load(p: *const Self) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            self
        }
    }

    impl Element<Avx2> for Bf16 {
        #[inline(always)]
        unsafe fn load(p: *const Self) -> __m256 {
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            super::bf16_to_f32(self.0)
        }
    }

    impl Element<Avx512> for Bf16 {
        #[inline(always)]
        unsafe fn load(p: *const Self) -> __m512 {
            let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            super::bf16_to_f32(self.0)
        }
    }

    impl Element<Avx2> for F16 {
        #[inline(always)]
        unsafe fn load(p: *const Self) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            super::f16_to_f32(self.0)
        }
    }

    impl Element<Avx512> for F16 {
        #[inline(always)]
        unsafe fn load(p: *const Self) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            super::f16_to_f32(self.0)
        }
    }

    /// Reinterprets the buffer's elements as `E` (same size and layout: `E` is `f32` or a
    /// transparent `u16`).
    pub(super) fn cast<T, E>(w: &[T]) -> &[E] {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<E>());
        assert_eq!(std::mem::align_of::<T>(), std::mem::align_of::<E>());
        // SAFETY: same size and alignment, asserted above; every bit pattern is valid for both.
        unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len()) }
    }

    /// See [`super::HostMatrix::accumulate`], on 8 lanes.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn accumulate_avx2<E: Element<Avx2>>(job: Job<'_>, w: &[E]) {
        // SAFETY: the caller guarantees the features the body's intrinsics need.
        unsafe { accumulate::<Avx2, E>(job, w) }
    }

    /// See [`super::HostMatrix::accumulate`], on 16 lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub(super) unsafe fn accumulate_avx512<E: Element<Avx512>>(job: Job<'_>, w: &[E]) {
        // SAFETY: as above.
        unsafe { accumulate::<Avx512, E>(job, w) }
    }

    /// Output columns per tile when several activation rows share the weights: a pass's eight
    /// weight-row segments (16 KiB in f32) stay in L1 while every activation row uses them, and
    /// the weights are read from memory once per step whatever the rows.
    const TILE: usize = 512;

    #[inline(always)]
    unsafe fn accumulate<I: Isa, E: Element<I>>(mut job: Job<'_>, w: &[E]) {
        let width = job.outputs.len();
        if width == 0 {
            return;
        }
        let rows = job.acc.len() / width;
        if rows > 1 && I::ROW_GROUPS {
            // Up to a group of rows reads each weight once, along rows as long as their sums
            // stay in L2; more groups take tiles, which the later groups re-read from L1.
            let tile = if rows > ROW_GROUP {
                TILE
            } else {
                (GROUP_SUMS / (rows * size_of::<f32>())).max(TILE)
            };
            for start in (0..width).step_by(tile) {
                let cols = start..(start + tile).min(width);
                // SAFETY: the caller's features; `cols` lies within the outputs.
                unsafe { accumulate_rows::<I, E>(&mut job, w, cols) };
            }
            return;
        }
        // One row streams whole weight rows (what the prefetcher favours); several take tiles.
        let tile = if rows > 1 { TILE } else { width };
        for start in (0..width).step_by(tile) {
            let cols = start..(start + tile).min(width);
            // SAFETY: the caller's features; `cols` lies within the outputs.
            unsafe { accumulate_tile::<I, E>(&mut job, w, cols) };
        }
    }

    /// One pass of [`ROWS`] weight rows `ws` over one activation row: `acc += xs @ ws`;
    /// prefetches `ahead` as it goes.
    ///
    /// # Safety
    /// The CPU must have the ISA; `ws` and `acc` are equally long.
    #[inline(always)]
    unsafe fn pass<I: Isa, E: Element<I>>(
        acc: &mut [f32],
        xs: &[f32],
        ws: &[&[E]; ROWS],
        ahead: &[*const E],
    ) {
        let n = ws[0].len();
        let vectors = n / I::LANES * I::LANES;
        // A loop rather than `array::from_fn`: a closure would not inherit the caller's target
        // features, and its intrinsics would become calls.
        // SAFETY (this block and the loop's): the ISA's features are enabled by the caller;
        // j + LANES <= vectors <= n, the length of every row slice and of acc.
        let mut xv = [unsafe { I::splat(0.0) }; ROWS];
        for r in 0..ROWS {
            xv[r] = unsafe { I::splat(xs[r]) };
        }
        for j in (0..vectors).step_by(I::LANES) {
            unsafe {
                let mut sum = I::load(acc.as_ptr().add(j));
                for r in 0..ROWS {
                    sum = I::fmadd(xv[r], E::load(ws[r].as_ptr().add(j)), sum);
                }
                I::store(acc.as_mut_ptr().add(j), sum);
                for p in ahead {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(j).cast());
                }
            }
        }
        for j in vectors..n {
            let mut sum = acc[j];
            for r in 0..ROWS {
                sum = xs[r].mul_add(ws[r][j].widen(), sum);
            }
            acc[j] = sum;
        }
    }

    /// Bytes of sums a group of activation rows keeps over a tile: a fraction of L2, so that
    /// the sums every pass loads and stores stay there.
    const GROUP_SUMS: usize = 256 * 1024;

    /// Activation rows taken together by [`pass_rows`]: their sums of two vectors each, the
    /// weight vectors and the splats of their inputs fit AVX-512's 32 registers.
    const ROW_GROUP: usize = 8;

    /// [`accumulate_tile`] for several activation rows on AVX-512, [`ROW_GROUP`] at a time
    /// ([`pass_rows`]).
    ///
    /// # Safety
    /// The CPU must have the ISA.
    #[inline(always)]
    unsafe fn accumulate_rows<I: Isa, E: Element<I>>(
        job: &mut Job<'_>,
        w: &[E],
        cols: Range<usize>,
    ) {
        let (x, x_stride, d_out) = (job.x, job.x_stride, job.d_out);
        let inputs = job.inputs.clone();
        let width = job.outputs.len();
        let rows = job.acc.len() / width;
        let n = cols.len();
        let first = job.outputs.start + cols.start;
        // Long rows prefetch further along themselves; short ones (the hardware prefetcher
        // loses track of streams that end every few KiB) the same columns of the next pass.
        let ahead = if n <= SHORT_ROW {
            ROWS * d_out
        } else {
            PREFETCH
        };
        let mut i = inputs.start;
        while i + ROWS <= inputs.end {
            let ws = &w[i * d_out + first..(i + ROWS - 1) * d_out + first + n];
            for m0 in (0..rows).step_by(ROW_GROUP) {
                let group = Group {
                    acc: &mut job.acc[m0 * width + cols.start..],
                    width,
                    x: &x[m0 * x_stride + i..],
                    x_stride,
                    n,
                    // The first group prefetches for all.
                    ahead: if m0 == 0 { Some(ahead) } else { None },
                };
                // SAFETY (every arm): the caller's features; `group` spans its rows' columns.
                unsafe {
                    match rows - m0 {
                        1 => pass_rows::<I, E, 1>(group, ws, d_out),
                        2 => pass_rows::<I, E, 2>(group, ws, d_out),
                        3 => pass_rows::<I, E, 3>(group, ws, d_out),
                        4 => pass_rows::<I, E, 4>(group, ws, d_out),
                        5 => pass_rows::<I, E, 5>(group, ws, d_out),
                        6 => pass_rows::<I, E, 6>(group, ws, d_out),
                        7 => pass_rows::<I, E, 7>(group, ws, d_out),
                        _ => pass_rows::<I, E, ROW_GROUP>(group, ws, d_out),
                    }
                }
            }
            i += ROWS;
        }
        // SAFETY: the caller's features.
        unsafe { accumulate_rest::<I, E>(job, w, cols, i) };
    }

    /// Up to [`ROW_GROUP`] activation rows of one pass.
    struct Group<'a> {
        /// Row `k`'s columns start at `acc[k * width]`.
        acc: &'a mut [f32],
        width: usize,
        /// Row `k`'s pass inputs start at `x[k * x_stride]`.
        x: &'a [f32],
        x_stride: usize,
        /// Columns.
        n: usize,
        /// How far ahead along the weights to prefetch, in elements, if at all.
        ahead: Option<usize>,
    }

    /// `acc[k] += x[k] @ ws` for the group's `M` rows, `ws` the pass's [`ROWS`] weight rows
    /// `stride` apart: along the columns two vectors at a time, the `M × 2` sums stay in
    /// registers for the whole pass, so each weight vector load serves `M` multiply-adds and
    /// each sum is loaded and stored once per pass. Each sum still adds the weight rows in input
    /// order.
    ///
    /// # Safety
    /// The CPU must have the ISA; the group's rows hold `n` columns and [`ROWS`] inputs.
    #[inline(always)]
    unsafe fn pass_rows<I: Isa, E: Element<I>, const M: usize>(
        group: Group<'_>,
        ws: &[E],
        stride: usize,
    ) {
        let Group {
            acc,
            width,
            x,
            x_stride,
            n,
            ahead,
        } = group;
        assert!((M - 1) * width + n <= acc.len() && (M - 1) * x_stride + ROWS <= x.len());
        assert!((ROWS - 1) * stride + n <= ws.len());
        let (acc, w) = (acc.as_mut_ptr(), ws.as_ptr());
        let lanes = I::LANES;
        let mut j = 0;
        // SAFETY (all blocks below): the asserts bound every offset (j + 2 lanes <= n); the
        // prefetches touch no memory.
        while j + 2 * lanes <= n {
            unsafe {
                let mut lo = [I::splat(0.0); M];
                let mut hi = [I::splat(0.0); M];
                for k in 0..M {
                    lo[k] = I::load(acc.add(k * width + j));
                    hi[k] = I::load(acc.add(k * width + j + lanes));
                }
                for r in 0..ROWS {
                    let w_lo = E::load(w.add(r * stride + j));
                    let w_hi = E::load(w.add(r * stride + j + lanes));
                    for k in 0..M {
                        let xv = I::splat(*x.get_unchecked(k * x_stride + r));
                        lo[k] = I::fmadd(xv, w_lo, lo[k]);
                        hi[k] = I::fmadd(xv, w_hi, hi[k]);
                    }
                }
                for k in 0..M {
                    I::store(acc.add(k * width + j), lo[k]);
                    I::store(acc.add(k * width + j + lanes), hi[k]);
                }
                if let Some(ahead) = ahead {
                    for r in 0..ROWS {
                        let p = w.wrapping_add(r * stride + j + ahead);
                        _mm_prefetch::<_MM_HINT_T0>(p.cast());
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(lanes).cast());
                    }
                }
            }
            j += 2 * lanes;
        }
        while j + lanes <= n {
            unsafe {
                for k in 0..M {
                    let mut sum = I::load(acc.add(k * width + j));
                    for r in 0..ROWS {
                        let xv = I::splat(*x.get_unchecked(k * x_stride + r));
                        sum = I::fmadd(xv, E::load(w.add(r * stride + j)), sum);
                    }
                    I::store(acc.add(k * width + j), sum);
                }
            }
            j += lanes;
        }
        for j in j..n {
            for k in 0..M {
                unsafe {
                    let a = acc.add(k * width + j);
                    let mut sum = *a;
                    for r in 0..ROWS {
                        sum = x[k * x_stride + r].mul_add((*w.add(r * stride + j)).widen(), sum);
                    }
                    *a = sum;
                }
            }
        }
    }

    /// The accumulate over output columns `cols` (relative to `job.outputs`). Each accumulator
    /// adds the weight rows in input order whatever the tiling, so tiles change no bits.
    #[inline(always)]
    unsafe fn accumulate_tile<I: Isa, E: Element<I>>(
        job: &mut Job<'_>,
        w: &[E],
        cols: Range<usize>,
    ) {
        let (x, x_stride, d_out) = (job.x, job.x_stride, job.d_out);
        let (inputs, outputs) = (job.inputs.clone(), job.outputs.clone());
        let width = outputs.len();
        let rows = job.acc.len() / width;
        let n = cols.len();
        let first = outputs.start + cols.start;
        // Weight row i's columns, and row m's columns of acc (`[rows, width]`).
        let row = |i: usize| i * d_out + first..i * d_out + first + n;
        let acc_cols = |m: usize| m * width + cols.start..m * width + cols.end;
        let ahead = if rows > 1 || n <= SHORT_ROW {
            ROWS * d_out
        } else {
            PREFETCH
        };
        // Each activation row prefetches its share of the next pass's weight rows, so the reads
        // from memory go on while the other rows compute from cache.
        let mut i = inputs.start;
        while i + ROWS <= inputs.end {
            let mut ws: [&[E]; ROWS] = [&[]; ROWS];
            for (r, ws) in ws.iter_mut().enumerate() {
                *ws = &w[row(i + r)];
            }
            for m in 0..rows {
                let mut ahead_rows = [std::ptr::null::<E>(); ROWS];
                let mut mine = 0;
                for r in (m..ROWS).step_by(rows) {
                    ahead_rows[mine] = ws[r].as_ptr().wrapping_add(ahead);
                    mine += 1;
                }
                let xs = &x[m * x_stride + i..m * x_stride + i + ROWS];
                // SAFETY: the caller's features; every slice is `n` long.
                unsafe { pass::<I, E>(&mut job.acc[acc_cols(m)], xs, &ws, &ahead_rows[..mine]) };
            }
            i += ROWS;
        }
        // SAFETY: the caller's features.
        unsafe { accumulate_rest::<I, E>(job, w, cols, i) };
    }

    /// The inputs from `from` on (fewer than [`ROWS`]), one weight row at a time.
    ///
    /// # Safety
    /// The CPU must have the ISA.
    #[inline(always)]
    unsafe fn accumulate_rest<I: Isa, E: Element<I>>(
        job: &mut Job<'_>,
        w: &[E],
        cols: Range<usize>,
        from: usize,
    ) {
        let (x, x_stride, d_out) = (job.x, job.x_stride, job.d_out);
        let width = job.outputs.len();
        let rows = job.acc.len() / width;
        let n = cols.len();
        let vectors = n / I::LANES * I::LANES;
        let first = job.outputs.start + cols.start;
        for i in from..job.inputs.end {
            let w_row = &w[i * d_out + first..i * d_out + first + n];
            for m in 0..rows {
                let acc = &mut job.acc[m * width + cols.start..m * width + cols.end];
                let xv = x[m * x_stride + i];
                // SAFETY: as above.
                unsafe {
                    let xb = I::splat(xv);
                    for j in (0..vectors).step_by(I::LANES) {
                        let a = acc.as_mut_ptr().add(j);
                        let sum = I::fmadd(xb, E::load(w_row.as_ptr().add(j)), I::load(a));
                        I::store(a, sum);
                    }
                }
                for j in vectors..n {
                    acc[j] = xv.mul_add(w_row[j].widen(), acc[j]);
                }
            }
        }
    }
}
