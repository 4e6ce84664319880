//! The accumulate routine of the quantized formats: Q8_0, Q4_0 (blocks of 32 weights along the
//! input, one f16 scale each) and bitsandbytes 4-bit. The activations stay f32 (quantising them
//! to 8 bits, as llama.cpp's kernels do, would move the logits by far more than the 1e-4 the
//! parity tests allow against the f32 model on the dequantized weights).
//!
//! Q8_0 and Q4_0 matrices are kept in tiles ([`Tiles`]): the blocks of [`TILE`] output rows at
//! one block position are stored together, scales first, then the codes in groups of four bytes
//! with the tile's rows side by side ([`code_at`]). The same bytes as GGUF's rows, in another
//! order: a vector lane is an output row, so there are no horizontal sums and one scale
//! conversion serves sixteen blocks. Tiles sit in panels of [`PANEL`] block positions; the
//! threads of a decode step split the inputs, so a thread's share is one contiguous stretch.
//!
//! On x86-64 with AVX-512 VNNI the codes stay integers and the activations are split into int8
//! pieces exact to f32 precision ([`vnni`]); with AVX2 + FMA + F16C (and AVX-512 without VNNI)
//! the codes widen to f32 lanes ([`avx2`]); everything else, and bitsandbytes, runs the portable
//! loop. The paths round differently (the tests hold all of them to an f64 reference).

use std::ops::Range;

use falcon_mamba_core::quant::{self, BLOCK};
use falcon_mamba_core::{BlockFormat, Bnb4Matrix};

use super::matrix::KernelPath;

/// Output rows per tile: one AVX-512 vector of f32 lanes.
pub(super) const TILE: usize = 16;

/// Block positions per panel (256 inputs). A thread's share of the inputs is whole panels
/// (but at the edges), so it reads one contiguous stretch of the matrix.
const PANEL: usize = 8;

/// Where code byte `k` of row `r`'s block sits in a tile record's codes: in groups of four
/// bytes, a group's bytes of the tile's 16 rows side by side (64 bytes, one vector of 16 lanes
/// of four bytes: what VNNI's `vpdpbusd` multiplies). A Q8_0 group is four consecutive codes;
/// a Q4_0 byte holds codes `k` and `k + 16`.
fn code_at(r: usize, k: usize) -> usize {
    (k / 4) * 4 * TILE + r * 4 + k % 4
}

/// Where the blocks of a `[d_out, d_in]` Q8_0/Q4_0 matrix sit in tile order. Rows past
/// `d_out` in the last tile are zero (scale 0).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiles {
    pub format: BlockFormat,
    pub d_out: usize,
    /// Blocks per row.
    pub blocks: usize,
}

impl Tiles {
    pub fn new(format: BlockFormat, d_out: usize, d_in: usize) -> Self {
        Tiles {
            format,
            d_out,
            blocks: d_in / BLOCK,
        }
    }

    /// Bytes of one tile's blocks at one position: `TILE` scales, then the codes.
    fn record(&self) -> usize {
        TILE * self.format.block_bytes()
    }

    /// Tiles, the last one padded.
    fn count(&self) -> usize {
        self.d_out.div_ceil(TILE)
    }

    /// Bytes of the whole matrix in tile order.
    pub fn len(&self) -> usize {
        self.count() * self.blocks * self.record()
    }

    /// Byte offset of tile `t`'s record at block position `b`: panels of [`PANEL`] block
    /// positions, each holding every tile's records for its positions, tile after tile.
    fn at(&self, t: usize, b: usize) -> usize {
        let p = b / PANEL;
        let width = PANEL.min(self.blocks - p * PANEL);
        (p * PANEL * self.count() + t * width + b % PANEL) * self.record()
    }

    /// GGUF-order rows (`d_out` rows of `blocks` blocks) in tile order.
    pub fn tile_rows(&self, rows: &[u8]) -> Vec<u8> {
        let size = self.format.block_bytes();
        let mut out = vec![0u8; self.len()];
        for o in 0..self.d_out {
            let (t, r) = (o / TILE, o % TILE);
            for b in 0..self.blocks {
                let block = &rows[(o * self.blocks + b) * size..][..size];
                let record = &mut out[self.at(t, b)..][..self.record()];
                record[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
                let codes = &mut record[2 * TILE..];
                for (k, &q) in block[2..].iter().enumerate() {
                    codes[code_at(r, k)] = q;
                }
            }
        }
        out
    }

    /// Block `b` of row `o` in GGUF's byte order into `out` (`block_bytes`).
    fn block(&self, bytes: &[u8], o: usize, b: usize, out: &mut [u8]) {
        let (t, r) = (o / TILE, o % TILE);
        let record = &bytes[self.at(t, b)..][..self.record()];
        out[..2].copy_from_slice(&record[2 * r..2 * r + 2]);
        for (k, q) in out[2..].iter_mut().enumerate() {
            *q = record[2 * TILE + code_at(r, k)];
        }
    }

    /// Block `b` of row `o` dequantized into `out` (32 weights).
    fn dequantize_block(&self, bytes: &[u8], o: usize, b: usize, out: &mut [f32]) {
        let mut block = [0u8; quant::Q8_0_BYTES];
        let block = &mut block[..self.format.block_bytes()];
        self.block(bytes, o, b, block);
        self.format.dequantize_row(block, out);
    }

    /// Row `o` dequantized into `out` (`[d_in]`).
    pub fn dequantize_row(&self, bytes: &[u8], o: usize, out: &mut [f32]) {
        for (b, values) in out.chunks_exact_mut(BLOCK).enumerate() {
            self.dequantize_block(bytes, o, b, values);
        }
    }
}

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

/// The accumulate over `bytes`, blocks in `tiles` order.
pub(super) fn accumulate_blocks(path: KernelPath, tiles: Tiles, bytes: &[u8], job: RowJob<'_>) {
    debug_assert_eq!(job.inputs.start % BLOCK, 0);
    assert_eq!(bytes.len(), tiles.len());
    #[cfg(target_arch = "x86_64")]
    {
        use super::matrix::Isa;
        let q4 = tiles.format == BlockFormat::Q4_0;
        let vnni =
            path == KernelPath::Detected && std::arch::is_x86_feature_detected!("avx512vnni");
        match super::matrix::isa_for(path) {
            // SAFETY: `isa_for` checked AVX-512 F and BW, F16C; VNNI is checked above.
            Isa::Avx512 if vnni => unsafe {
                return match q4 {
                    true => vnni::run::<true>(tiles, bytes, job),
                    false => vnni::run::<false>(tiles, bytes, job),
                };
            },
            // SAFETY: `isa_for` checked AVX2, FMA and F16C (AVX-512 implies them).
            Isa::Avx512 | Isa::Avx2 => unsafe {
                return match q4 {
                    true => avx2::run::<true>(tiles, bytes, job),
                    false => avx2::run::<false>(tiles, bytes, job),
                };
            },
            Isa::Portable => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    portable_dot(job, BLOCK, |o, b, out: &mut [f32]| {
        tiles.dequantize_block(bytes, o, b, out)
    });
}

/// The accumulate over a bitsandbytes matrix (blocks within rows), portable.
pub(super) fn accumulate_bnb4(m: &Bnb4Matrix, job: RowJob<'_>) {
    let d_in = m.d_in;
    portable_dot(job, m.block, |o, b, out: &mut [f32]| {
        let first = o * d_in + b * m.block;
        out.iter_mut()
            .enumerate()
            .for_each(|(j, w)| *w = m.weight(first + j));
    });
}

/// The portable row dot: `weights(o, b, out)` writes block `b` of row `o` dequantized; each
/// block's products are summed and the sum added to the output, in block order.
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
    for start in (inputs.start..inputs.end).step_by(block) {
        let n = block.min(inputs.end - start);
        for (j, o) in outputs.clone().enumerate() {
            weights(o, start / block, &mut w);
            for m in 0..rows {
                let xs = &x[m * x_stride + start..m * x_stride + start + n];
                acc[m * width + j] += w.iter().zip(xs).map(|(w, x)| w * x).sum::<f32>();
            }
        }
    }
}

/// Input rows `m0..` of a job in chunks of at most `max` (1, 2 or 4), calling
/// `pass(m0, rows_in_chunk)`.
#[cfg(target_arch = "x86_64")]
fn in_chunks(rows: usize, max: usize, mut pass: impl FnMut(usize, usize)) {
    let mut m0 = 0;
    while m0 < rows {
        let n = match rows - m0 {
            n if n >= 4 && max >= 4 => 4,
            n if n >= 2 && max >= 2 => 2,
            _ => 1,
        };
        pass(m0, n);
        m0 += n;
    }
}

/// Adds the tile's lanes (`lanes[k]` is output `lane0 + k`) that are the job's outputs to
/// input row `m`'s accumulators.
#[cfg(target_arch = "x86_64")]
fn add_lanes(job: &mut RowJob<'_>, m: usize, lane0: usize, lanes: &[f32]) {
    let width = job.outputs.len();
    for (k, &value) in lanes.iter().enumerate() {
        let o = lane0 + k;
        if job.outputs.contains(&o) {
            job.acc[m * width + (o - job.outputs.start)] += value;
        }
    }
}

/// The job's block positions `blocks` cut at panel boundaries, in order.
#[cfg(target_arch = "x86_64")]
fn panels(blocks: Range<usize>) -> impl Iterator<Item = Range<usize>> {
    let Range { start, end } = blocks;
    (start..end)
        .filter(move |b| b % PANEL == 0 || *b == start)
        .map(move |b| b..end.min((b / PANEL + 1) * PANEL))
}

/// Checks a job against the matrix and the input buffer; returns the block range.
#[cfg(target_arch = "x86_64")]
fn checked_blocks(tiles: &Tiles, job: &RowJob<'_>) -> Range<usize> {
    let (first, last) = (job.inputs.start / BLOCK, job.inputs.end.div_ceil(BLOCK));
    let rows = job.rows();
    assert!(last <= tiles.blocks && job.outputs.end <= tiles.d_out);
    assert!(rows == 0 || (rows - 1) * job.x_stride + last * BLOCK <= job.x.len());
    first..last
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    //! AVX-512 VNNI: the codes stay integers. Each input block is split into three int8 pieces,
    //! `x ≈ s1·p1 + s2·p2 + s3·p3` (each piece the rounding error of the one before, 254 times
    //! finer: the sum is within 2⁻²² of the block's largest input, f32's own precision), and
    //! `vpdpbusd` multiplies a piece's four bytes into a group of four codes of all sixteen rows
    //! at once. Q8_0's signed codes take the piece as the unsigned operand, offset by 128 (taken
    //! back with the codes' sum, one more `vpdpbusd` against ones); Q4_0's unsigned codes take
    //! it as the signed one (their offset 8 taken back with the piece's sum).
    //!
    //! Helpers are functions, not closures: a closure would not inherit the caller's target
    //! features, and every intrinsic in it would become a call.

    // Index loops over the register arrays read like the math (row m, piece k).
    #![allow(clippy::needless_range_loop)]

    use std::arch::x86_64::*;

    use super::{add_lanes, checked_blocks, in_chunks, panels, RowJob, Tiles, BLOCK, TILE};

    /// One input block in pieces: four bytes of a piece per group of four inputs.
    #[derive(Clone, Copy)]
    struct Pieces {
        words: [[i32; BLOCK / 4]; 3],
        scales: [f32; 3],
        /// Each piece's sum of its (signed) values.
        sums: [f32; 3],
    }

    /// Splits `x` (32 inputs) into pieces; `offset` (128 or 0) is added to every byte stored.
    fn split(x: &[f32], offset: i32) -> Pieces {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let mut pieces = Pieces {
            words: [[0; BLOCK / 4]; 3],
            scales: [0.0; 3],
            sums: [0.0; 3],
        };
        let finite = x.iter().all(|v| v.is_finite());
        if amax == 0.0 || !finite {
            let byte = offset as u8 as i32;
            let word = byte | byte << 8 | byte << 16 | byte << 24;
            pieces.words = [[word; BLOCK / 4]; 3];
            // A NaN or infinite input makes the block's sums NaN, as the f32 product would.
            if !finite {
                pieces.scales = [f32::NAN; 3];
            }
            return pieces;
        }
        let mut rest = [0.0f32; BLOCK];
        rest.copy_from_slice(x);
        let mut scale = amax / 127.0;
        for k in 0..3 {
            let mut bytes = [0u8; BLOCK];
            let mut sum = 0i32;
            let inverse = 1.0 / scale;
            for (b, r) in bytes.iter_mut().zip(rest.iter_mut()) {
                let q = (*r * inverse).round().clamp(-127.0, 127.0);
                *r -= q * scale;
                sum += q as i32;
                *b = (q as i32 + offset) as u8;
            }
            for (g, word) in pieces.words[k].iter_mut().enumerate() {
                *word = i32::from_le_bytes([
                    bytes[4 * g],
                    bytes[4 * g + 1],
                    bytes[4 * g + 2],
                    bytes[4 * g + 3],
                ]);
            }
            pieces.scales[k] = scale;
            pieces.sums[k] = sum as f32;
            scale /= 254.0;
        }
        pieces
    }

    /// Q8_0 (`Q4 = false`) or Q4_0 (`true`).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, and F16C; `bytes` holds the matrix `tiles`
    /// describes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn run<const Q4: bool>(tiles: Tiles, bytes: &[u8], mut job: RowJob<'_>) {
        if job.outputs.is_empty() || job.inputs.is_empty() {
            return;
        }
        let blocks = checked_blocks(&tiles, &job);
        let offset = if Q4 { 0 } else { 128 };
        // [row][block]
        let pieces: Vec<Vec<Pieces>> = (0..job.rows())
            .map(|m| {
                let x = &job.x[m * job.x_stride..];
                blocks
                    .clone()
                    .map(|b| split(&x[b * BLOCK..(b + 1) * BLOCK], offset))
                    .collect()
            })
            .collect();
        in_chunks(job.rows(), 4, |m0, n| {
            // SAFETY: the features are enabled by the caller; the bounds are checked above.
            unsafe {
                match n {
                    4 => pass::<Q4, 4>(&tiles, bytes, &mut job, &pieces, blocks.clone(), m0),
                    2 => pass::<Q4, 2>(&tiles, bytes, &mut job, &pieces, blocks.clone(), m0),
                    _ => pass::<Q4, 1>(&tiles, bytes, &mut job, &pieces, blocks.clone(), m0),
                }
            }
        });
    }

    /// How far ahead of the loads the weights are prefetched, in bytes (a thread reads a
    /// contiguous run of each tile's records), every cache line of a record.
    const AHEAD: usize = 4096;

    #[inline(always)]
    unsafe fn pass<const Q4: bool, const R: usize>(
        tiles: &Tiles,
        bytes: &[u8],
        job: &mut RowJob<'_>,
        pieces: &[Vec<Pieces>],
        blocks: std::ops::Range<usize>,
        m0: usize,
    ) {
        let record_len = tiles.record();
        let mut lanes = [0.0f32; TILE];
        for panel in panels(blocks.clone()) {
            for t in job.outputs.start / TILE..job.outputs.end.div_ceil(TILE) {
                // SAFETY (the block): every record lies in `bytes` (sliced); prefetches may point
                // anywhere; the features are enabled by the caller.
                unsafe {
                    let mut total = [_mm512_setzero_ps(); R];
                    for b in panel.clone() {
                        let i = b - blocks.start;
                        let record = bytes[tiles.at(t, b)..][..record_len].as_ptr();
                        for line in (0..record_len).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(record.wrapping_add(AHEAD + line).cast());
                        }
                        let codes = record.add(2 * TILE);
                        let x: [&Pieces; R] = std::array::from_fn(|m| &pieces[m0 + m][i]);
                        let mut acc = [[_mm512_setzero_si512(); 3]; R];
                        let value = if Q4 {
                            let mask = _mm512_set1_epi8(0x0F);
                            for c in 0..BLOCK / 8 {
                                let v = _mm512_loadu_si512(codes.add(64 * c).cast());
                                let lo = _mm512_and_si512(v, mask);
                                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                                for m in 0..R {
                                    for k in 0..3 {
                                        let words = &x[m].words[k];
                                        let a = _mm512_dpbusd_epi32(
                                            acc[m][k],
                                            lo,
                                            _mm512_set1_epi32(words[c]),
                                        );
                                        acc[m][k] = _mm512_dpbusd_epi32(
                                            a,
                                            hi,
                                            _mm512_set1_epi32(words[c + 4]),
                                        );
                                    }
                                }
                            }
                            let mut value = [_mm512_setzero_ps(); R];
                            for m in 0..R {
                                for k in 0..3 {
                                    // Σ (q - 8)·p = Σ q·p - 8·Σ p.
                                    let d = _mm512_sub_ps(
                                        _mm512_cvtepi32_ps(acc[m][k]),
                                        _mm512_set1_ps(8.0 * x[m].sums[k]),
                                    );
                                    value[m] = _mm512_fmadd_ps(
                                        _mm512_set1_ps(x[m].scales[k]),
                                        d,
                                        value[m],
                                    );
                                }
                            }
                            value
                        } else {
                            let ones = _mm512_set1_epi8(1);
                            let mut code_sum = _mm512_setzero_si512();
                            for g in 0..BLOCK / 4 {
                                let w = _mm512_loadu_si512(codes.add(64 * g).cast());
                                code_sum = _mm512_dpbusd_epi32(code_sum, ones, w);
                                for m in 0..R {
                                    for k in 0..3 {
                                        let p = _mm512_set1_epi32(x[m].words[k][g]);
                                        acc[m][k] = _mm512_dpbusd_epi32(acc[m][k], p, w);
                                    }
                                }
                            }
                            // Σ (p + 128)·q - 128·Σ q = Σ p·q.
                            let offset =
                                _mm512_mul_ps(_mm512_set1_ps(128.0), _mm512_cvtepi32_ps(code_sum));
                            let mut value = [_mm512_setzero_ps(); R];
                            for m in 0..R {
                                for k in 0..3 {
                                    let d = _mm512_sub_ps(_mm512_cvtepi32_ps(acc[m][k]), offset);
                                    value[m] = _mm512_fmadd_ps(
                                        _mm512_set1_ps(x[m].scales[k]),
                                        d,
                                        value[m],
                                    );
                                }
                            }
                            value
                        };
                        let scales = _mm512_cvtph_ps(_mm256_loadu_si256(record.cast()));
                        for m in 0..R {
                            total[m] = _mm512_fmadd_ps(scales, value[m], total[m]);
                        }
                    }
                    for (m, &v) in total.iter().enumerate() {
                        _mm512_storeu_ps(lanes.as_mut_ptr(), v);
                        add_lanes(job, m0 + m, t * TILE, &lanes);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 + FMA + F16C (no VNNI): the codes widened to f32 lanes, eight rows (half a tile)
    //! per vector, each multiplied by a broadcast input. Helpers are functions, not closures
    //! (a closure would not inherit the caller's target features).

    use std::arch::x86_64::*;

    use super::{add_lanes, checked_blocks, in_chunks, panels, RowJob, Tiles, BLOCK, TILE};

    /// Q8_0 (`Q4 = false`) or Q4_0 (`true`).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `bytes` holds the matrix `tiles` describes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run<const Q4: bool>(tiles: Tiles, bytes: &[u8], mut job: RowJob<'_>) {
        if job.outputs.is_empty() || job.inputs.is_empty() {
            return;
        }
        let blocks = checked_blocks(&tiles, &job);
        in_chunks(job.rows(), 2, |m0, n| {
            // SAFETY: the features are enabled by the caller; the bounds are checked above.
            unsafe {
                match n {
                    2 => pass::<Q4, 2>(&tiles, bytes, &mut job, blocks.clone(), m0),
                    _ => pass::<Q4, 1>(&tiles, bytes, &mut job, blocks.clone(), m0),
                }
            }
        });
    }

    /// The byte that a left shift by `LEFT` brings to the top of each 32-bit lane,
    /// sign-extended, as f32.
    #[inline(always)]
    unsafe fn signed_byte<const LEFT: i32>(v: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_srai_epi32::<24>(_mm256_slli_epi32::<LEFT>(v)))
    }

    /// The nibble at bit `SHIFT` of each 32-bit lane, less 8, as f32.
    #[inline(always)]
    unsafe fn nibble<const SHIFT: i32>(v: __m256i) -> __m256 {
        let n = _mm256_and_si256(_mm256_srli_epi32::<SHIFT>(v), _mm256_set1_epi32(0xF));
        _mm256_cvtepi32_ps(_mm256_sub_epi32(n, _mm256_set1_epi32(8)))
    }

    /// `sums[m] += w · x[m][j]`.
    #[inline(always)]
    unsafe fn madd<const R: usize>(
        w: __m256,
        xs: &[*const f32; R],
        j: usize,
        sums: &mut [__m256; R],
    ) {
        unsafe {
            for m in 0..R {
                sums[m] = _mm256_fmadd_ps(w, _mm256_set1_ps(*xs[m].add(j)), sums[m]);
            }
        }
    }

    #[inline(always)]
    unsafe fn pass<const Q4: bool, const R: usize>(
        tiles: &Tiles,
        bytes: &[u8],
        job: &mut RowJob<'_>,
        blocks: std::ops::Range<usize>,
        m0: usize,
    ) {
        let record_len = tiles.record();
        let x_rows: [&[f32]; R] = std::array::from_fn(|m| &job.x[(m0 + m) * job.x_stride..]);
        let mut lanes = [0.0f32; TILE / 2];
        for panel in panels(blocks) {
            for t in job.outputs.start / TILE..job.outputs.end.div_ceil(TILE) {
                for h in 0..2 {
                    // SAFETY (the block): every record lies in `bytes` (sliced), each x row holds
                    // the block's inputs (checked by the caller).
                    unsafe {
                        let mut total = [_mm256_setzero_ps(); R];
                        for b in panel.clone() {
                            let record = bytes[tiles.at(t, b)..][..record_len].as_ptr();
                            let codes = record.add(2 * TILE + 32 * h);
                            let xs: [*const f32; R] = x_rows.map(|x| x[b * BLOCK..].as_ptr());
                            // Two chains per input row: each sum's adds wait on the one before.
                            let mut even = [_mm256_setzero_ps(); R];
                            let mut odd = [_mm256_setzero_ps(); R];
                            // Q4_0 packs two codes a byte: half the groups.
                            let groups = if Q4 { BLOCK / 8 } else { BLOCK / 4 };
                            for g in 0..groups {
                                let v = _mm256_loadu_si256(codes.add(64 * g).cast());
                                if Q4 {
                                    // Byte i holds codes 4g + i (low) and 16 + 4g + i (high).
                                    let j = 4 * g;
                                    madd(nibble::<0>(v), &xs, j, &mut even);
                                    madd(nibble::<4>(v), &xs, j + 16, &mut odd);
                                    madd(nibble::<8>(v), &xs, j + 1, &mut even);
                                    madd(nibble::<12>(v), &xs, j + 17, &mut odd);
                                    madd(nibble::<16>(v), &xs, j + 2, &mut even);
                                    madd(nibble::<20>(v), &xs, j + 18, &mut odd);
                                    madd(nibble::<24>(v), &xs, j + 3, &mut even);
                                    madd(nibble::<28>(v), &xs, j + 19, &mut odd);
                                } else {
                                    let j = 4 * g;
                                    madd(signed_byte::<24>(v), &xs, j, &mut even);
                                    madd(signed_byte::<16>(v), &xs, j + 1, &mut odd);
                                    madd(signed_byte::<8>(v), &xs, j + 2, &mut even);
                                    madd(signed_byte::<0>(v), &xs, j + 3, &mut odd);
                                }
                            }
                            let scales =
                                _mm256_cvtph_ps(_mm_loadu_si128(record.add(16 * h).cast()));
                            for m in 0..R {
                                let block = _mm256_add_ps(even[m], odd[m]);
                                total[m] = _mm256_fmadd_ps(scales, block, total[m]);
                            }
                        }
                        for (m, &v) in total.iter().enumerate() {
                            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                            add_lanes(job, m0 + m, t * TILE + h * (TILE / 2), &lanes);
                        }
                    }
                }
            }
        }
    }
}
