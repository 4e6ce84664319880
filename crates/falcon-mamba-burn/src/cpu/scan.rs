//! The selective scan as a CPU kernel (used for burn-ndarray).
//!
//! Inputs are read time-major (`[batch, len, channels]`) where they are: that is how the mixer's
//! projections lay them out anyway. Each rayon task scans one block of `LANES` adjacent channels
//! of one batch row: the lanes are SIMD lanes, the `state` values of every lane stay in registers
//! (or L1) for the whole sequence, B_t and C_t are scalars broadcast to all lanes, and nothing is
//! allocated per time step. `exp` is a polynomial the compiler vectorises; on x86-64 the block is
//! compiled a second time for AVX2 + FMA and picked at run time.

use burn::backend::ndarray::NdArrayTensor;
use burn::prelude::*;
use rayon::prelude::*;

use crate::ops::ScanInput;

/// Channels per task: two AVX2 vectors, a whole 64-byte cache line of each time step's row.
pub(crate) const LANES: usize = 16;

/// State sizes up to this are scanned from stack buffers (Falcon Mamba and Mamba-1 use 16).
const STACK_STATES: usize = 16;

/// See [`crate::ops::SelectiveScanBackend::selective_scan`].
pub fn selective_scan<B>(input: ScanInput<B>) -> (Tensor<B, 3>, Tensor<B, 3>)
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let device = input.x.device();
    let [batch, channels, len] = input.x.dims();
    let state = input.a.dims()[1];
    let x = time_major(input.x); // [batch, len, channels]
    let delta = time_major(input.delta); // [batch, len, channels]
    let z = input.z.map(time_major); // [batch, len, channels]
    let b = time_major(input.b); // [batch, len, state]
    let c = time_major(input.c); // [batch, len, state]
    let a = HostSlice::new(input.a); // [channels, state]
    let d = HostSlice::new(input.d); // [channels]
    let bias = input
        .delta_bias
        .map_or_else(|| HostSlice::Copied(vec![0.0; channels]), HostSlice::new); // [channels]

    let shared = ScanBuffers {
        channels,
        state,
        len,
        x: &x,
        delta: &delta,
        z: z.as_deref(),
        b: &b,
        c: &c,
        a: &a,
        d: &d,
        bias: &bias,
    };
    // Outputs are channel-major, so every task owns one contiguous piece of each. Short
    // sequences get more channels per task, to keep tasks worth scheduling (~64k updates).
    let mut y = vec![0.0f32; batch * channels * len]; // [batch, channels, len]
    let mut s = host(input.state); // [batch, channels, state], scanned in place
    let per_task = LANES * (65_536 / (LANES * state * len).max(1)).clamp(1, 64);
    y.par_chunks_mut(channels * len)
        .zip(s.par_chunks_mut(channels * state))
        .enumerate()
        .for_each(|(bi, (y_row, s_row))| {
            y_row
                .par_chunks_mut(per_task * len)
                .zip(s_row.par_chunks_mut(per_task * state))
                .enumerate()
                .for_each(|(task, (y_task, s_task))| {
                    let blocks = y_task
                        .chunks_mut(LANES * len)
                        .zip(s_task.chunks_mut(LANES * state));
                    for (i, (y_block, s_block)) in blocks.enumerate() {
                        shared.block(bi, task * per_task + i * LANES, y_block, s_block);
                    }
                });
        });
    let y = Tensor::from_data(TensorData::new(y, [batch, channels, len]), &device);
    let s = Tensor::from_data(TensorData::new(s, [batch, channels, state]), &device);
    (y, s)
}

/// See [`crate::ops::SelectiveScanBackend::causal_conv1d`]. Works time-major, as the mixer lays x out:
/// each output row (one time step, every channel) is `kernel` vectorised multiply-adds of input
/// rows; rows are split across rayon tasks. The output is returned as a channel-major view of
/// time-major memory, so the mixer's next projection reads it without a copy.
pub fn causal_conv1d<B>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    conv_state: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 3>)
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let device = x.device();
    let [batch, channels, len] = x.dims();
    let kernel = weight.dims()[1];
    let history = kernel - 1;
    let x = time_major(x);
    let x: &[f32] = &x; // [batch, len, channels], looked up once rather than per row
    let weight = host(weight); // [channels, kernel]
    let mut taps = vec![0.0f32; kernel * channels]; // [kernel, channels]
    for (ch, w) in weight.chunks_exact(kernel).enumerate() {
        for (k, w) in w.iter().enumerate() {
            taps[k * channels + ch] = *w;
        }
    }
    let bias = bias.map_or_else(|| vec![0.0; channels], host); // [channels]
    let state = host(conv_state); // [batch, channels, history]

    // The input row at padded position p of batch row bi: the state for p < history.
    let mut state_rows = vec![0.0f32; batch * history * channels]; // [batch, history, channels]
    for (bi, state) in state.chunks_exact(channels * history).enumerate() {
        for (ch, s) in state.chunks_exact(history).enumerate() {
            for (p, s) in s.iter().enumerate() {
                state_rows[(bi * history + p) * channels + ch] = *s;
            }
        }
    }
    let input = |bi: usize, p: usize| -> &[f32] {
        if p < history {
            &state_rows[(bi * history + p) * channels..][..channels]
        } else {
            &x[(bi * len + p - history) * channels..][..channels]
        }
    };

    let mut y = vec![0.0f32; batch * len * channels]; // [batch, len, channels]
    let rows_per_task = (16_384 / (channels * kernel).max(1)).max(1);
    y.par_chunks_mut(rows_per_task * channels)
        .enumerate()
        .for_each(|(task, rows)| {
            for (r, out) in rows.chunks_exact_mut(channels).enumerate() {
                let row = task * rows_per_task + r;
                let (bi, t) = (row / len, row % len);
                out.copy_from_slice(&bias);
                for (k, w) in taps.chunks_exact(channels).enumerate() {
                    for ((o, w), v) in out.iter_mut().zip(w).zip(input(bi, t + k)) {
                        *o += w * v;
                    }
                }
                out.iter_mut().for_each(|o| *o = silu::<false>(*o));
            }
        });

    let mut new_state = vec![0.0f32; batch * channels * history]; // [batch, channels, history]
    for bi in 0..batch {
        for p in 0..history {
            for (ch, v) in input(bi, len + p).iter().enumerate() {
                new_state[(bi * channels + ch) * history + p] = *v;
            }
        }
    }
    let y = Tensor::<B, 3>::from_data(TensorData::new(y, [batch, len, channels]), &device);
    let new_state = Tensor::from_data(
        TensorData::new(new_state, [batch, channels, history]),
        &device,
    );
    (y.swap_dims(1, 2), new_state)
}

/// See [`crate::ops::SelectiveScanBackend::rms_norm`]: one pass per row, the mean of squares summed
/// in f64.
pub fn rms_norm<B, const D: usize>(
    x: Tensor<B, D>,
    weight: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D>
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let device = x.device();
    let width = x.dims()[D - 1];
    let shape = x.shape();
    let mut y = host(x); // [rows, width]
    let weight = weight.map(host); // [width]
    for row in y.chunks_exact_mut(width.max(1)) {
        rms_norm_row(row, weight.as_deref(), eps);
    }
    Tensor::from_data(TensorData::new(y, shape), &device)
}

/// One row of [`rms_norm`], in place.
pub(crate) fn rms_norm_row(row: &mut [f32], weight: Option<&[f32]>, eps: f64) {
    let mean_square = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / row.len() as f64;
    let inv_rms = (1.0 / (mean_square + eps).sqrt()) as f32;
    match weight {
        Some(w) => row
            .iter_mut()
            .zip(w)
            .for_each(|(v, w)| *v = *v * inv_rms * w),
        None => row.iter_mut().for_each(|v| *v *= inv_rms),
    }
}

/// A tensor's values in row-major order. burn's `into_data` cannot take the buffer of a shared
/// tensor (weights, states) and then walks it element by element through dynamic-rank indices;
/// this copies the storage's slice in one go.
pub(crate) fn host<B, const D: usize>(t: Tensor<B, D>) -> Vec<f32>
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    if let NdArrayTensor::F32(storage) = t.clone().into_primitive().tensor() {
        if let Some(slice) = storage.view().as_slice() {
            return slice.to_vec();
        }
    }
    t.into_data().iter::<f32>().collect()
}

/// A `[batch, channels, len]` tensor's values time-major (`[batch, len, channels]`). The mixer's
/// tensors are channel-major views of time-major buffers, so this is normally their storage
/// itself, borrowed.
fn time_major<B>(t: Tensor<B, 3>) -> HostSlice
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    HostSlice::new(t.swap_dims(1, 2))
}

/// A tensor's values in row-major order, read where they are when its storage is laid out so
/// (no copy), copied otherwise.
pub(crate) enum HostSlice {
    /// An f32 tensor in standard layout.
    Borrowed(NdArrayTensor),
    /// Anything else, copied.
    Copied(Vec<f32>),
}

impl HostSlice {
    pub(crate) fn new<B, const D: usize>(t: Tensor<B, D>) -> Self
    where
        B: Backend<FloatTensorPrimitive = NdArrayTensor>,
    {
        let primitive = t.clone().into_primitive().tensor();
        match &primitive {
            NdArrayTensor::F32(storage) if storage.view().to_slice().is_some() => {
                Self::Borrowed(primitive)
            }
            NdArrayTensor::F32(storage) => Self::Copied(storage.view().iter().copied().collect()),
            _ => Self::Copied(t.into_data().iter::<f32>().collect()),
        }
    }
}

impl std::ops::Deref for HostSlice {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Self::Borrowed(NdArrayTensor::F32(storage)) => match storage.view().to_slice() {
                Some(slice) => slice,
                None => unreachable!("borrowed only in standard layout"),
            },
            Self::Borrowed(_) => unreachable!("borrowed only as f32"),
            Self::Copied(values) => values,
        }
    }
}

/// The host buffers every scan task reads, laid out as [`ScanInput`]'s tensors but time-major.
pub(crate) struct ScanBuffers<'a> {
    pub channels: usize,
    pub state: usize,
    pub len: usize,
    /// `[batch, len, channels]`
    pub x: &'a [f32],
    /// `[batch, len, channels]`
    pub delta: &'a [f32],
    /// `[batch, len, channels]`
    pub z: Option<&'a [f32]>,
    /// `[batch, len, state]`
    pub b: &'a [f32],
    /// `[batch, len, state]`
    pub c: &'a [f32],
    /// `[channels, state]`
    pub a: &'a [f32],
    /// `[channels]`
    pub d: &'a [f32],
    /// `[channels]`
    pub bias: &'a [f32],
}

impl ScanBuffers<'_> {
    /// Scans channels `d0 .. d0 + LANES` of batch row `bi` into `y` (`[lanes, len]`), continuing
    /// from and updating their state `s` (`[lanes, state]`); both are cut short when fewer
    /// channels remain.
    pub(crate) fn block(&self, bi: usize, d0: usize, y: &mut [f32], s: &mut [f32]) {
        let full = self.channels - d0 >= LANES;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX-512 F and FMA, checked just above.
            return unsafe { self.block_avx512(full, bi, d0, y, s) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { self.block_avx2_fma(full, bi, d0, y, s) };
        }
        match full {
            true => self.block_generic::<false, true>(bi, d0, y, s),
            false => self.block_generic::<false, false>(bi, d0, y, s),
        }
    }

    /// The same operations as [`ScanBuffers::block_avx2_fma`] on 16 lanes where the compiler
    /// vectorises them (a decode step's 16 states): lane width changes no bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block_avx512(&self, full: bool, bi: usize, d0: usize, y: &mut [f32], s: &mut [f32]) {
        if self.len == 1 {
            return self.step::<true, true>(bi, d0, y, s);
        }
        match full {
            true => self.block_generic::<true, true>(bi, d0, y, s),
            false => self.block_generic::<true, false>(bi, d0, y, s),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2_fma(
        &self,
        full: bool,
        bi: usize,
        d0: usize,
        y: &mut [f32],
        s: &mut [f32],
    ) {
        match full {
            true => self.block_generic::<true, true>(bi, d0, y, s),
            false => self.block_generic::<true, false>(bi, d0, y, s),
        }
    }

    /// [`ScanBuffers::block_generic`] for one time step (a decode step): the state update channel
    /// by channel, the states as the vector lanes, so A and the state are read where they are
    /// instead of transposed to lane-major and back; the per-channel scalars and sums across
    /// the channels. Every value is computed by the same operations in the same order (the sum
    /// over states included), so the bits are the lane-major loop's. `WIDE` (AVX-512 only)
    /// transposes a full block's 16 states in registers for the sums.
    #[inline(always)]
    fn step<const FMA: bool, const WIDE: bool>(
        &self,
        bi: usize,
        d0: usize,
        y_out: &mut [f32],
        s_out: &mut [f32],
    ) {
        let (channels, n_state) = (self.channels, self.state);
        let width = LANES.min(channels - d0);
        let row = bi * channels + d0; // time step 0 of batch row bi, channel d0
        let b = &self.b[bi * n_state..(bi + 1) * n_state];
        let c = &self.c[bi * n_state..(bi + 1) * n_state];
        let x = &self.x[row..row + width];
        // Per-channel scalars first, over all channels at once (they vectorise across them).
        // Whole arrays, so that the loops vectorise; lanes past `width` compute on zeros.
        let raw = lanes_of(&self.delta[row..row + width]);
        let bias = lanes_of(&self.bias[d0..d0 + width]);
        let mut delta = [0.0f32; LANES];
        for l in 0..LANES {
            delta[l] = softplus::<FMA>(raw[l] + bias[l]);
        }
        let mut gate = [1.0f32; LANES];
        if let Some(z) = self.z {
            let z = lanes_of(&z[row..row + width]);
            for l in 0..LANES {
                gate[l] = silu::<FMA>(z[l]);
            }
        }
        for l in 0..width {
            let ch = d0 + l;
            let delta = delta[l];
            let delta_x = delta * x[l];
            let a = &self.a[ch * n_state..(ch + 1) * n_state];
            let s = &mut s_out[l * n_state..(l + 1) * n_state];
            for ((s, a), b) in s.iter_mut().zip(a).zip(b) {
                let decay = exp::<FMA>(delta * a);
                *s = madd::<FMA>(decay, *s, delta_x * b);
            }
        }
        // y = Σ_n s·c for every channel at once: the channels' sums are independent chains the
        // CPU runs side by side (one channel's is sixteen dependent multiply-adds).
        let mut y = [0.0f32; LANES];
        let transposed = cfg!(target_arch = "x86_64") && WIDE && width == LANES && n_state == LANES;
        #[cfg(target_arch = "x86_64")]
        if transposed {
            // SAFETY: `WIDE` is only set where the CPU has AVX-512 F.
            y = unsafe { state_sums_16(s_out, c) };
        }
        if !transposed {
            let mut s_n = [0.0f32; LANES]; // every channel's state n
            for (n, &c) in c.iter().enumerate() {
                for (l, s) in s_n[..width].iter_mut().enumerate() {
                    *s = s_out[l * n_state + n];
                }
                for (y, &s) in y.iter_mut().zip(&s_n) {
                    *y = madd::<FMA>(s, c, *y);
                }
            }
        }
        for l in 0..width {
            let out = madd::<FMA>(self.d[d0 + l], x[l], y[l]);
            y_out[l] = if self.z.is_some() { out * gate[l] } else { out };
        }
    }

    /// The scan of one block; `FMA` selects fused multiply-adds (only where the CPU has them:
    /// elsewhere `mul_add` is a slow library call), `FULL` a block of `LANES` channels.
    #[inline(always)]
    fn block_generic<const FMA: bool, const FULL: bool>(
        &self,
        bi: usize,
        d0: usize,
        y_out: &mut [f32],
        s_out: &mut [f32],
    ) {
        if self.len == 1 {
            return self.step::<FMA, false>(bi, d0, y_out, s_out);
        }
        let (channels, n_state, len) = (self.channels, self.state, self.len);
        let width = if FULL {
            LANES
        } else {
            LANES.min(channels - d0)
        };
        // Lanes past the last channel compute on zeros and are dropped by the caller. A full
        // block's lanes are an array read (two vector moves); a copy of variable length is a
        // library call per time step and input (6% of a parallel prefill).
        let lanes = |src: &[f32], at: usize| -> [f32; LANES] {
            if FULL {
                let Ok(v) = <[f32; LANES]>::try_from(&src[at..at + LANES]) else {
                    unreachable!("a slice of LANES values")
                };
                return v;
            }
            let mut v = [0.0; LANES];
            v[..width].copy_from_slice(&src[at..at + width]);
            v
        };
        let d = lanes(self.d, d0);
        let bias = lanes(self.bias, d0);
        // A and the state, lane-major: on the stack for the usual state sizes (a decode step
        // scans thousands of blocks of one time step, where two allocations per block showed).
        let (mut a_stack, mut s_stack) = (
            [[0.0f32; LANES]; STACK_STATES],
            [[0.0f32; LANES]; STACK_STATES],
        );
        let (mut a_heap, mut s_heap) = (Vec::new(), Vec::new());
        let (a, s): (&mut [[f32; LANES]], &mut [[f32; LANES]]) = if n_state <= STACK_STATES {
            (&mut a_stack[..n_state], &mut s_stack[..n_state])
        } else {
            a_heap.resize(n_state, [0.0; LANES]);
            s_heap.resize(n_state, [0.0; LANES]);
            (&mut a_heap, &mut s_heap)
        };
        for l in 0..width {
            for n in 0..n_state {
                a[n][l] = self.a[(d0 + l) * n_state + n];
                s[n][l] = s_out[l * n_state + n];
            }
        }

        for t in 0..len {
            let row = (bi * len + t) * channels + d0;
            let x = lanes(self.x, row);
            let raw = lanes(self.delta, row);
            let mut delta = [0.0f32; LANES];
            let mut delta_x = [0.0f32; LANES];
            for l in 0..LANES {
                delta[l] = softplus::<FMA>(raw[l] + bias[l]);
                delta_x[l] = delta[l] * x[l];
            }
            let bc = (bi * len + t) * n_state;
            for (n, (a, s)) in a.iter().zip(s.iter_mut()).enumerate() {
                let b = self.b[bc + n];
                for l in 0..LANES {
                    let decay = exp::<FMA>(delta[l] * a[l]);
                    s[l] = madd::<FMA>(decay, s[l], delta_x[l] * b);
                }
            }
            // A second pass over the states rather than accumulating in the first: there, y is
            // spilled to the stack and every state's update waits on the previous one's store.
            let mut y = [0.0f32; LANES];
            for (n, s) in s.iter().enumerate() {
                let c = self.c[bc + n];
                for l in 0..LANES {
                    y[l] = madd::<FMA>(s[l], c, y[l]);
                }
            }
            let mut out = [0.0f32; LANES];
            for l in 0..LANES {
                out[l] = madd::<FMA>(d[l], x[l], y[l]);
            }
            if let Some(z) = self.z {
                let z = lanes(z, row);
                for l in 0..LANES {
                    out[l] *= silu::<FMA>(z[l]);
                }
            }
            for (l, out) in out.iter().enumerate().take(width) {
                y_out[l * len + t] = *out;
            }
        }
        for l in 0..width {
            for (n, s) in s.iter().enumerate() {
                s_out[l * n_state + n] = s[l];
            }
        }
    }
}

/// `y[l] = Σ_n s[l][n] c[n]` for a block of 16 channels with 16 states each (`s` is
/// `[channel, state]`), summed in state order with fused multiply-adds as the scalar loop does:
/// the block is transposed in registers (four rounds of shuffles) so that each state's values of
/// all the channels form one vector.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn state_sums_16(s: &[f32], c: &[f32]) -> [f32; LANES] {
    use std::arch::x86_64::*;
    assert!(s.len() >= LANES * LANES && c.len() >= LANES);
    // SAFETY: the bounds are asserted; the caller guarantees the features.
    unsafe {
        let mut r = [_mm512_setzero_ps(); LANES]; // r[channel], lanes = states
        for (l, r) in r.iter_mut().enumerate() {
            *r = _mm512_loadu_ps(s.as_ptr().add(l * LANES));
        }
        // Pairs of channels interleaved within each 128-bit lane.
        let mut t = [_mm512_setzero_ps(); LANES];
        for g in 0..LANES / 2 {
            t[2 * g] = _mm512_unpacklo_ps(r[2 * g], r[2 * g + 1]);
            t[2 * g + 1] = _mm512_unpackhi_ps(r[2 * g], r[2 * g + 1]);
        }
        // u[4g + k], 128-bit lane q: channels 4g..4g+4 of state k + 4q.
        let mut u = [_mm512_setzero_ps(); LANES];
        for g in 0..LANES / 4 {
            let (t0, t1) = (_mm512_castps_pd(t[4 * g]), _mm512_castps_pd(t[4 * g + 1]));
            let (t2, t3) = (
                _mm512_castps_pd(t[4 * g + 2]),
                _mm512_castps_pd(t[4 * g + 3]),
            );
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
        }
        // The 128-bit lanes regrouped: state k + 4q of every channel in one vector.
        let mut by_state = [_mm512_setzero_ps(); LANES];
        for k in 0..4 {
            let even_low = _mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]);
            let odd_low = _mm512_shuffle_f32x4::<0xdd>(u[k], u[4 + k]);
            let even_high = _mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
            let odd_high = _mm512_shuffle_f32x4::<0xdd>(u[8 + k], u[12 + k]);
            by_state[k] = _mm512_shuffle_f32x4::<0x88>(even_low, even_high);
            by_state[k + 8] = _mm512_shuffle_f32x4::<0xdd>(even_low, even_high);
            by_state[k + 4] = _mm512_shuffle_f32x4::<0x88>(odd_low, odd_high);
            by_state[k + 12] = _mm512_shuffle_f32x4::<0xdd>(odd_low, odd_high);
        }
        let mut y = _mm512_setzero_ps();
        for (n, s) in by_state.iter().enumerate() {
            y = _mm512_fmadd_ps(*s, _mm512_set1_ps(c[n]), y);
        }
        let mut out = [0.0f32; LANES];
        _mm512_storeu_ps(out.as_mut_ptr(), y);
        out
    }
}

/// Up to [`LANES`] values as an array, zeros after them.
#[inline(always)]
fn lanes_of(values: &[f32]) -> [f32; LANES] {
    if let Ok(full) = <[f32; LANES]>::try_from(values) {
        return full;
    }
    let mut lanes = [0.0; LANES];
    for (lane, &v) in lanes.iter_mut().zip(values) {
        *lane = v;
    }
    lanes
}

/// `a * b + c`, fused where `FMA` (only where the CPU has it: elsewhere `mul_add` is a slow
/// library call).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `x * sigmoid(x)`; `FMA` as in [`madd`].
#[inline(always)]
pub(crate) fn silu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp::<FMA>(-x))
}

/// `ln(1 + e^x)` as `max(x, 0) + ln(1 + e^-|x|)`, in vectorisable operations: for u = e^-|x| in
/// (0, 1], ln(1 + u) = 2 atanh(u / (2 + u)), whose series converges fast for u / (2 + u) ≤ 1/3.
#[inline(always)]
fn softplus<const FMA: bool>(x: f32) -> f32 {
    let u = exp::<FMA>(-x.abs());
    let q = u / (2.0 + u);
    let q2 = q * q;
    let series = 1.0 / 13.0;
    let series = madd::<FMA>(series, q2, 1.0 / 11.0);
    let series = madd::<FMA>(series, q2, 1.0 / 9.0);
    let series = madd::<FMA>(series, q2, 1.0 / 7.0);
    let series = madd::<FMA>(series, q2, 1.0 / 5.0);
    let series = madd::<FMA>(series, q2, 1.0 / 3.0);
    let series = madd::<FMA>(series, q2, 1.0);
    x.max(0.0) + 2.0 * q * series
}

/// `e^x` for x in [-87, 88] (clamped outside), relative error below 3e-7 (measured 2.4e-7), in operations the
/// compiler can vectorise: x = k ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial, 2^k by
/// building the float's exponent bits.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a library call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = madd::<FMA>(x, LOG2_E, ROUND);
    let k = shifted - ROUND;
    // `shifted` lies in [2^23, 2^24), where the low mantissa bits are the integer k itself: its
    // bits minus ROUND's are k, with no float-to-int conversion (which would not vectorise).
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let r = madd::<FMA>(-k, LN2_LO, madd::<FMA>(-k, LN2_HI, x));
    let p = 1.0 / 720.0;
    let p = madd::<FMA>(p, r, 1.0 / 120.0);
    let p = madd::<FMA>(p, r, 1.0 / 24.0);
    let p = madd::<FMA>(p, r, 1.0 / 6.0);
    let p = madd::<FMA>(p, r, 0.5);
    let p = madd::<FMA>(p, r, 1.0);
    let p = madd::<FMA>(p, r, 1.0);
    p * f32::from_bits(k_bits.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    // Both arithmetic variants (`mul_add` outside an FMA-enabled function is the exact library
    // call, so the fused results are the same as in the kernel).
    #[test]
    fn vectorisable_softplus_is_accurate() {
        for softplus in [super::softplus::<false>, super::softplus::<true>] {
            let mut worst = 0.0f64;
            for i in 0..=200_000 {
                let x = -40.0 + 80.0 * i as f32 / 200_000.0;
                let want = if x > 20.0 {
                    f64::from(x)
                } else {
                    f64::from(x).exp().ln_1p()
                };
                worst = worst.max(((f64::from(softplus(x)) - want) / want).abs());
            }
            assert!(worst < 5e-7, "worst relative error {worst:e}");
        }
    }

    #[test]
    fn polynomial_exp_is_accurate() {
        for exp in [super::exp::<false>, super::exp::<true>] {
            let mut worst = 0.0f64;
            for i in 0..=200_000 {
                let x = -87.0 + 175.0 * i as f32 / 200_000.0;
                let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
                worst = worst.max(((got - want) / want).abs());
            }
            assert!(worst < 3e-7, "worst relative error {worst:e}");
        }
    }
}
