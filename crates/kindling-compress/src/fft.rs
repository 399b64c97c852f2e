//! Host FFTs for [Fourier ATOMO](crate::Fourier): the real DFT of a gradient and its inverse in
//! f32, multi-threaded and cache-blocked.
//!
//! A real signal of `N = 2M` entries is transformed as the complex signal `z_m = x_{2m} +
//! i·x_{2m+1}` of `M` points plus one `O(N)` pass that separates the even and odd halves. The
//! complex DFT of `M = R·C` points runs in the four-step order (Bailey 1990): `C` transforms of
//! `R` points down the columns of the `R × C` matrix, a twiddle `e^{−2πi·n₂k₁/M}`, then `R`
//! transforms of `C` points. Each pass works on strips of [`STRIP`] columns, so its transforms
//! run in cache with every butterfly applied to [`STRIP`] contiguous lanes at once (vectorised by
//! the compiler), and strips go to rayon's threads. The memory traffic is four passes over the
//! data; the results do not depend on the thread count.
//!
//! The inverse transform is the forward one with real and imaginary parts swapped:
//! `conj(F(conj z)) = swap(F(swap z))`, and with split storage a swap is free.

use std::f64::consts::PI;

use rayon::prelude::*;

use crate::{host, simd};

/// Columns per strip: one 64-byte cache line of f32 per row.
const STRIP: usize = 16;

/// Strips of input columns one task of the first four-step pass reads together.
const GROUP: usize = 4;

/// Transforms of fewer points than this run in one piece.
const FOUR_STEP_MIN: usize = 1 << 10;

/// A complex vector in split storage.
struct Split {
    re: Vec<f32>,
    im: Vec<f32>,
}

impl Split {
    fn zeros(len: usize) -> Self {
        Self {
            re: vec![0.0; len],
            im: vec![0.0; len],
        }
    }

    /// A vector from this thread's [`POOL`], its contents unspecified.
    fn pooled(len: usize) -> Self {
        Self {
            re: take(len),
            im: take(len),
        }
    }

    /// Returns the buffers to this thread's [`POOL`].
    fn recycle(self) {
        recycle(self.re);
        recycle(self.im);
    }
}

thread_local! {
    /// Each thread's two in-cache work vectors for one strip or block of rows.
    static SCRATCH: std::cell::RefCell<(Split, Split)> =
        std::cell::RefCell::new((Split::zeros(0), Split::zeros(0)));
}

/// Runs `f` on this thread's two [`SCRATCH`] vectors, of `len` entries each (contents
/// unspecified), compiled for the widest vector unit ([`simd::wide!`]; pass `f` as an
/// `#[inline(always)]` closure, or it is compiled for the baseline). `f` must not start rayon
/// work (it would re-enter the scratch).
#[inline(always)]
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut Split, &mut Split) -> R) -> R {
    SCRATCH.with_borrow_mut(|(a, b)| {
        for v in [&mut a.re, &mut a.im, &mut b.re, &mut b.im] {
            v.resize(len, 0.0);
        }
        simd::wide!(f(a, b))
    })
}

/// Buffers a thread keeps in its [`POOL`]: a transform of `2M` reals uses four of `M` f32 and
/// the coefficient vector of `2M`.
const POOL_BUFFERS: usize = 5;

thread_local! {
    /// The work buffers of the large transforms, kept between calls on the calling thread: a
    /// fresh buffer costs a page fault per 4 KiB, as much as the transform's arithmetic.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `len` f32 from this thread's [`POOL`] (the smallest that holds `len`, else a new
/// one), its contents unspecified.
pub(crate) fn take(len: usize) -> Vec<f32> {
    let mut buffer = POOL.with_borrow_mut(|pool| {
        (0..pool.len())
            .filter(|&i| pool[i].capacity() >= len)
            .min_by_key(|&i| pool[i].capacity())
            .map(|i| pool.swap_remove(i))
            .unwrap_or_default()
    });
    buffer.resize(len, 0.0);
    buffer
}

/// Frees this thread's [`POOL`].
pub(crate) fn release_pool() {
    POOL.with_borrow_mut(Vec::clear);
}

/// Returns a buffer to this thread's [`POOL`]; the smallest is dropped when it is full.
pub(crate) fn recycle(buffer: Vec<f32>) {
    POOL.with_borrow_mut(|pool| {
        pool.push(buffer);
        if pool.len() > POOL_BUFFERS {
            let smallest = (0..pool.len()).min_by_key(|&i| pool[i].capacity());
            if let Some(i) = smallest {
                pool.swap_remove(i);
            }
        }
    });
}

/// The twiddles of a radix-2 transform of `len` points: stage `h` (butterflies `h` apart) uses
/// `e^{−πi·k/h}`, `0 ≤ k < h`, stored at `[h − 1, 2h − 1)`.
struct Stages {
    re: Vec<f32>,
    im: Vec<f32>,
}

impl Stages {
    fn new(len: usize) -> Self {
        let (mut re, mut im) = (Vec::with_capacity(len), Vec::with_capacity(len));
        let mut h = 1;
        while h < len {
            for k in 0..h {
                let t = -PI * k as f64 / h as f64;
                re.push(t.cos() as f32);
                im.push(t.sin() as f32);
            }
            h *= 2;
        }
        Self { re, im }
    }
}

/// `e^{−2πi·e/period}` for `0 ≤ e < period` (a power of two) as the product of two table entries
/// of `√period` each, in f64.
struct Powers {
    shift: u32,
    fine: Vec<(f64, f64)>,
    coarse: Vec<(f64, f64)>,
}

impl Powers {
    fn new(period: usize) -> Self {
        let shift = period.trailing_zeros().div_ceil(2);
        let table = |count: usize, step: usize| {
            (0..count)
                .map(|j| {
                    let t = -2.0 * PI * (j * step) as f64 / period as f64;
                    (t.cos(), t.sin())
                })
                .collect()
        };
        Self {
            shift,
            fine: table(1 << shift, 1),
            coarse: table((period >> shift).max(1), 1 << shift),
        }
    }

    fn at(&self, e: usize) -> (f64, f64) {
        let (a, b) = self.fine[e & ((1 << self.shift) - 1)];
        let (c, d) = self.coarse[e >> self.shift];
        (a * c - b * d, a * d + b * c)
    }
}

/// `e^{−2πi·j/period}` for `0 ≤ j < len`, in f32 split storage.
fn roots(len: usize, period: usize) -> Split {
    let (re, im) = (0..len)
        .map(|j| {
            let t = -2.0 * PI * j as f64 / period as f64;
            (t.cos() as f32, t.sin() as f32)
        })
        .unzip();
    Split { re, im }
}

/// The bit-reversal permutation of `0..len`.
fn bit_reversal(len: usize) -> Vec<usize> {
    let bits = len.trailing_zeros();
    (0..len)
        .map(|i| {
            if bits == 0 {
                0
            } else {
                i.reverse_bits() >> (usize::BITS - bits)
            }
        })
        .collect()
}

/// In place: the radix-2 butterflies of `rows`-point transforms (rows already in bit-reversed
/// order) over `lanes` independent signals stored row-major (`[row][lane]`). With several lanes,
/// stages go two at a time ([`two_stages`]): each row is loaded and stored once per pair of
/// stages, with the same operations in the same order as one stage at a time.
#[inline(always)]
fn butterflies(re: &mut [f32], im: &mut [f32], lanes: usize, stages: &Stages) {
    let rows = re.len() / lanes;
    let mut h = 1;
    while h < rows {
        if lanes > 1 && 2 * h < rows {
            two_stages(re, im, lanes, h, stages);
            h *= 4;
            continue;
        }
        let (wr, wi) = (&stages.re[h - 1..2 * h - 1], &stages.im[h - 1..2 * h - 1]);
        let block = 2 * h * lanes;
        for (bre, bim) in re.chunks_exact_mut(block).zip(im.chunks_exact_mut(block)) {
            let (ar, br) = bre.split_at_mut(h * lanes);
            let (ai, bi) = bim.split_at_mut(h * lanes);
            if lanes == 1 {
                for (((((ar, ai), br), bi), &c), &s) in
                    ar.iter_mut().zip(ai).zip(br).zip(bi).zip(wr).zip(wi)
                {
                    butterfly(ar, ai, br, bi, c, s);
                }
                continue;
            }
            for (k, (&c, &s)) in wr.iter().zip(wi).enumerate() {
                let lane = k * lanes..(k + 1) * lanes;
                for (((ar, ai), br), bi) in ar[lane.clone()]
                    .iter_mut()
                    .zip(&mut ai[lane.clone()])
                    .zip(&mut br[lane.clone()])
                    .zip(&mut bi[lane])
                {
                    butterfly(ar, ai, br, bi, c, s);
                }
            }
        }
        h *= 2;
    }
}

/// The stages `h` and `2h` (`4h ≤ rows`) of [`butterflies`] in one pass: in each block of `4h`
/// rows, rows `k`, `h + k`, `2h + k`, `3h + k` (`k < h`) meet only each other in these two
/// stages, so they are loaded once, get stage `h`'s butterflies (`k` with `h + k`, `2h + k` with
/// `3h + k`, twiddle `w_h^k`) and then stage `2h`'s (`k` with `2h + k`, twiddle `w_{2h}^k`;
/// `h + k` with `3h + k`, twiddle `w_{2h}^{h+k}`), and are stored once: the arithmetic of the two
/// stages one after the other, bit for bit, with half the loads and stores.
#[inline(always)]
fn two_stages(re: &mut [f32], im: &mut [f32], lanes: usize, h: usize, stages: &Stages) {
    let (w1r, w1i) = (&stages.re[h - 1..2 * h - 1], &stages.im[h - 1..2 * h - 1]);
    let (w2r, w2i) = (
        &stages.re[2 * h - 1..4 * h - 1],
        &stages.im[2 * h - 1..4 * h - 1],
    );
    let quarter = h * lanes;
    for (bre, bim) in re
        .chunks_exact_mut(4 * quarter)
        .zip(im.chunks_exact_mut(4 * quarter))
    {
        let (ar, rest) = bre.split_at_mut(quarter);
        let (br, rest) = rest.split_at_mut(quarter);
        let (cr, dr) = rest.split_at_mut(quarter);
        let (ai, rest) = bim.split_at_mut(quarter);
        let (bi, rest) = rest.split_at_mut(quarter);
        let (ci, di) = rest.split_at_mut(quarter);
        for k in 0..h {
            let (c1, s1) = (w1r[k], w1i[k]);
            let (c2, s2) = (w2r[k], w2i[k]);
            let (c3, s3) = (w2r[h + k], w2i[h + k]);
            let lane = k * lanes..(k + 1) * lanes;
            let (ar, ai) = (&mut ar[lane.clone()], &mut ai[lane.clone()]);
            let (br, bi) = (&mut br[lane.clone()], &mut bi[lane.clone()]);
            let (cr, ci) = (&mut cr[lane.clone()], &mut ci[lane.clone()]);
            let (dr, di) = (&mut dr[lane.clone()], &mut di[lane]);
            for j in 0..lanes {
                let (mut a_r, mut a_i, mut b_r, mut b_i) = (ar[j], ai[j], br[j], bi[j]);
                let (mut c_r, mut c_i, mut d_r, mut d_i) = (cr[j], ci[j], dr[j], di[j]);
                butterfly(&mut a_r, &mut a_i, &mut b_r, &mut b_i, c1, s1);
                butterfly(&mut c_r, &mut c_i, &mut d_r, &mut d_i, c1, s1);
                butterfly(&mut a_r, &mut a_i, &mut c_r, &mut c_i, c2, s2);
                butterfly(&mut b_r, &mut b_i, &mut d_r, &mut d_i, c3, s3);
                (ar[j], ai[j], br[j], bi[j]) = (a_r, a_i, b_r, b_i);
                (cr[j], ci[j], dr[j], di[j]) = (c_r, c_i, d_r, d_i);
            }
        }
    }
}

/// Column `b` of the row-major [`STRIP`] × [`STRIP`] block `src` into row `rows_of[b]` of
/// `dst` (rows of [`STRIP`] lanes).
#[inline(always)]
fn transpose_into(src: &[f32], rows_of: &[usize], dst: &mut [f32]) {
    let mut block = [[0f32; STRIP]; STRIP];
    for (j, row) in src.chunks_exact(STRIP).enumerate() {
        for (b, &v) in row.iter().enumerate() {
            block[b][j] = v;
        }
    }
    for (column, &row) in block.iter().zip(rows_of) {
        copy_lanes(&mut dst[row * STRIP..(row + 1) * STRIP], column);
    }
}

/// `dst ← src`, inlined for a strip's width.
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32]) {
    match (
        <&mut [f32; STRIP]>::try_from(&mut *dst),
        <&[f32; STRIP]>::try_from(src),
    ) {
        (Ok(dst), Ok(src)) => *dst = *src,
        _ => dst.copy_from_slice(src),
    }
}

#[inline(always)]
fn butterfly(ar: &mut f32, ai: &mut f32, br: &mut f32, bi: &mut f32, c: f32, s: f32) {
    let tr = *br * c - *bi * s;
    let ti = *br * s + *bi * c;
    *br = *ar - tr;
    *bi = *ai - ti;
    *ar += tr;
    *ai += ti;
}

/// A transform's output as the passes leave it: `Z[k₁ + rows·k₂]` (`k₁ < rows`, `k₂ < cols`) at
/// `[k₁ / STRIP][k₂][k₁ % STRIP]`, strips of [`STRIP`] columns of the `cols × rows` matrix. A
/// direct transform is one row (`cols = 1`): natural order.
struct Spectrum {
    data: Split,
    rows: usize,
    cols: usize,
}

impl Spectrum {
    /// The natural-order row `Z[rows·k₂ .. rows·(k₂ + 1)]` into `re`, `im`.
    /// `Z_k` for `k = rows·k₂` (the first entry of row `k₂`).
    fn data_at(&self, k: usize) -> (f32, f32) {
        let from = k / self.rows * STRIP;
        (self.data.re[from], self.data.im[from])
    }

    /// Rows `k₂ ∈ [first, first + count)` in natural order into `re`, `im` (`[k₂][k₁]`): each
    /// strip's part of them is contiguous.
    #[inline(always)]
    fn rows(&self, first: usize, re: &mut [f32], im: &mut [f32]) {
        let count = re.len() / self.rows;
        let width = STRIP.min(self.rows);
        for strip in 0..self.rows.div_ceil(STRIP) {
            let from = strip * STRIP * self.cols + first * width;
            for r in 0..count {
                let src = from + r * width..from + (r + 1) * width;
                let dst = r * self.rows + strip * STRIP..r * self.rows + strip * STRIP + width;
                copy_lanes(&mut re[dst.clone()], &self.data.re[src.clone()]);
                copy_lanes(&mut im[dst], &self.data.im[src]);
            }
        }
    }

    /// Rows gathered at a time by [`Spectrum::rows`].
    fn block(&self) -> usize {
        STRIP.min(self.cols)
    }
}

/// The input of [`dft`].
trait Source: Sync + Sized {
    /// Writes `z_j, …, z_{j+re.len()−1}` into `re`, `im`.
    fn load(&self, j: usize, re: &mut [f32], im: &mut [f32]);

    /// Called once the input has been read, before the second pass takes its buffers.
    fn release(self) {}
}

/// A real signal read as complex pairs `z_j = x_{2j} + i·x_{2j+1}`, zero past its end.
struct Pairs<'a>(&'a [f32]);

impl Source for Pairs<'_> {
    #[inline(always)]
    fn load(&self, j: usize, re: &mut [f32], im: &mut [f32]) {
        let x = self.0;
        let from = (2 * j).min(x.len());
        if let (Ok(re), Ok(im), Some(Ok(pairs))) = (
            <&mut [f32; STRIP]>::try_from(&mut *re),
            <&mut [f32; STRIP]>::try_from(&mut *im),
            x.get(from..from + 2 * STRIP)
                .map(<&[f32; 2 * STRIP]>::try_from),
        ) {
            for b in 0..STRIP {
                (re[b], im[b]) = (pairs[2 * b], pairs[2 * b + 1]);
            }
            return;
        }
        let pairs = x[from..].chunks_exact(2);
        let tail = pairs.remainder();
        let mut filled = 0;
        for ((r, i), pair) in re.iter_mut().zip(im.iter_mut()).zip(pairs) {
            (*r, *i) = (pair[0], pair[1]);
            filled += 1;
        }
        re[filled..].fill(0.0);
        im[filled..].fill(0.0);
        if let (Some(r), Some(&v)) = (re.get_mut(filled), tail.first()) {
            *r = v;
        }
    }
}

/// A complex vector read with its parts swapped (`im + i·re`): the forward transform of the
/// swapped input, swapped back, is the inverse transform. Its buffers go back to the pool once
/// read.
struct Swapped(Split);

impl Source for Swapped {
    #[inline(always)]
    fn load(&self, j: usize, re: &mut [f32], im: &mut [f32]) {
        let len = re.len();
        copy_lanes(re, &self.0.im[j..j + len]);
        copy_lanes(im, &self.0.re[j..j + len]);
    }

    fn release(self) {
        self.0.recycle();
    }
}

/// The unnormalised forward DFT `Z_k = Σ_j z_j·e^{−2πi·jk/M}` of `M = len` points (a power of
/// two).
fn dft(len: usize, source: impl Source) -> Spectrum {
    if len < FOUR_STEP_MIN {
        let mut z = Split::zeros(len);
        source.load(0, &mut z.re, &mut z.im);
        source.release();
        for (i, j) in bit_reversal(len).into_iter().enumerate() {
            if i < j {
                z.re.swap(i, j);
                z.im.swap(i, j);
            }
        }
        butterflies(&mut z.re, &mut z.im, 1, &Stages::new(len));
        return Spectrum {
            data: z,
            rows: len,
            cols: 1,
        };
    }
    let rows = 1 << (len.trailing_zeros() / 2);
    let cols = len / rows;
    let powers = Powers::new(len);
    // Step 1: the column transforms of the rows × cols matrix z[n₁·cols + n₂], times
    // e^{−2πi·n₂k₁/M}, in place in t: strip s of input columns (n₂ = 16s + b) fills the
    // contiguous block t[s][k₁][b].
    let mut t = Split::pooled(len);
    {
        let (stages, rev) = (Stages::new(rows), bit_reversal(rows));
        // e^{−2πi·b·k₁/M} for the lanes b of a strip: [k₁][b].
        let mut lane_roots = Split::zeros(rows * STRIP);
        for k1 in 0..rows {
            for b in 0..STRIP {
                let (c, s) = powers.at(b * k1);
                lane_roots.re[k1 * STRIP + b] = c as f32;
                lane_roots.im[k1 * STRIP + b] = s as f32;
            }
        }
        // A task takes GROUP strips, so that each input row is read GROUP·STRIP entries at a
        // time (fewer pages touched per row), then transforms them strip by strip.
        t.re.par_chunks_mut(GROUP * STRIP * rows)
            .zip(t.im.par_chunks_mut(GROUP * STRIP * rows))
            .enumerate()
            .for_each(|(group, (gre, gim))| {
                simd::wide!({
                    let first = group * GROUP * STRIP;
                    for (n1, &row) in rev.iter().enumerate() {
                        for (g, (tre, tim)) in gre
                            .chunks_exact_mut(STRIP * rows)
                            .zip(gim.chunks_exact_mut(STRIP * rows))
                            .enumerate()
                        {
                            let lanes = row * STRIP..(row + 1) * STRIP;
                            source.load(
                                n1 * cols + first + g * STRIP,
                                &mut tre[lanes.clone()],
                                &mut tim[lanes],
                            );
                        }
                    }
                    for (g, (tre, tim)) in gre
                        .chunks_exact_mut(STRIP * rows)
                        .zip(gim.chunks_exact_mut(STRIP * rows))
                        .enumerate()
                    {
                        butterflies(tre, tim, STRIP, &stages);
                        let first = first + g * STRIP;
                        // e^{−2πi·(first + b)·k₁/M} = e^{−2πi·first·k₁/M}·e^{−2πi·b·k₁/M}.
                        for (k1, ((xr, xi), (lr, li))) in tre
                            .chunks_exact_mut(STRIP)
                            .zip(tim.chunks_exact_mut(STRIP))
                            .zip(
                                lane_roots
                                    .re
                                    .chunks_exact(STRIP)
                                    .zip(lane_roots.im.chunks_exact(STRIP)),
                            )
                            .enumerate()
                        {
                            let (c, s) = powers.at(first * k1);
                            let (c, s) = (c as f32, s as f32);
                            for (((xr, xi), &lr), &li) in
                                xr.iter_mut().zip(xi.iter_mut()).zip(lr).zip(li)
                            {
                                let (wr, wi) = (c * lr - s * li, c * li + s * lr);
                                (*xr, *xi) = (*xr * wr - *xi * wi, *xr * wi + *xi * wr);
                            }
                        }
                    }
                })
            });
    }
    source.release();
    // Step 2: the row transforms: for each strip of k₁, the cols-point transforms over n₂, into
    // strips[strip][k₂][b]. Its input for n₂ = 16s + b is column b of the 16 × 16 block
    // t[s][16·strip ..][..], read whole (1 KiB) and transposed.
    let mut strips = Split::pooled(len);
    {
        let (stages, rev) = (Stages::new(cols), bit_reversal(cols));
        strips
            .re
            .par_chunks_mut(STRIP * cols)
            .zip(strips.im.par_chunks_mut(STRIP * cols))
            .enumerate()
            .for_each(|(strip, (sre, sim))| {
                simd::wide!({
                    let first = strip * STRIP;
                    for s in 0..cols / STRIP {
                        let block = s * STRIP * rows + first * STRIP;
                        let block = block..block + STRIP * STRIP;
                        let rows_of = &rev[s * STRIP..(s + 1) * STRIP];
                        transpose_into(&t.re[block.clone()], rows_of, sre);
                        transpose_into(&t.im[block], rows_of, sim);
                    }
                    butterflies(sre, sim, STRIP, &stages);
                })
            });
    }
    t.recycle();
    Spectrum {
        data: strips,
        rows,
        cols,
    }
}

/// The coefficients of `x` (zero-padded to `N = 2M` entries, `N` a power of two, at least 2 and
/// at least `x.len()`) in the orthonormal real DFT basis of [`Fourier`](crate::Fourier), with
/// their [`host::chunk_norms`] (taken as they are written, in cache): with
/// `X_k = Σ_j x_j·e^{−2πi·jk/N}`, `λ_0 = X_0/√N`, `λ_M = X_M/√N`, and for `0 < k < M`
/// `λ_k = √(2/N)·Re X_k`, `λ_{M+k} = −√(2/N)·Im X_k`.
pub(crate) fn atom_coefficients(x: &[f32], big: usize) -> (Vec<f32>, (u32, f64, f64)) {
    let half = big / 2;
    let z = dft(half, Pairs(x));
    // X_k = E_k − i·w^k·D_k with E = (Z_k + conj Z_{M−k})/2, D = (Z_k − conj Z_{M−k})/2 and
    // w = e^{−2πi/N}; Z_M = Z_0. Row k₂ of Z meets row cols − 1 − k₂ (reversed) and the first
    // entry of row cols − k₂.
    let edge = (1.0 / big as f64).sqrt() as f32;
    let mid = (2.0 / big as f64).sqrt() as f32;
    let (rows, cols) = (z.rows, z.cols);
    let local = roots(rows, big);
    let powers = Powers::new(big);
    let mut lambda = take(big);
    let (cos, sin) = lambda.split_at_mut(half);
    let block = z.block();
    let parts: Vec<(u32, f64, f64)> = cos
        .par_chunks_mut(block * rows)
        .zip(sin.par_chunks_mut(block * rows))
        .enumerate()
        .map(|(g, (cos, sin))| {
            with_scratch(
                block * rows,
                #[inline(always)]
                |here, mirror| {
                    let first = g * block;
                    z.rows(first, &mut here.re, &mut here.im);
                    z.rows(cols - first - block, &mut mirror.re, &mut mirror.im);
                    for (r, (cos, sin)) in
                        cos.chunks_mut(rows).zip(sin.chunks_mut(rows)).enumerate()
                    {
                        let k2 = first + r;
                        let row = r * rows..(r + 1) * rows;
                        let (ar, ai) = (&here.re[row.clone()], &here.im[row]);
                        let back = (block - 1 - r) * rows;
                        let start = z.data_at((cols - k2) % cols * rows);
                        let (bc, bs) = powers.at(k2 * rows);
                        let (bc, bs) = (bc as f32, bs as f32);
                        // Z_{M−k} for k₁ = 1, 2, …: row cols − 1 − k₂ backwards from its end.
                        let mirrored = back + 1..back + rows;
                        let (mr, mi) = (&mirror.re[mirrored.clone()], &mirror.im[mirrored]);
                        let values = ar.iter().zip(ai).zip(&local.re).zip(&local.im);
                        let images = std::iter::once((start.0, start.1))
                            .chain(mr.iter().rev().copied().zip(mi.iter().rev().copied()));
                        for (((cos, sin), (((&ar, &ai), &lr), &li)), (br, bi)) in
                            cos.iter_mut().zip(sin.iter_mut()).zip(values).zip(images)
                        {
                            let bi = -bi;
                            let (er, ei) = (0.5 * (ar + br), 0.5 * (ai + bi));
                            let (dr, di) = (0.5 * (ar - br), 0.5 * (ai - bi));
                            let (wr, wi) = (bc * lr - bs * li, bc * li + bs * lr);
                            // −i·w·D = (wi·dr + wr·di) + i·(wi·di − wr·dr)
                            *cos = mid * (er + wi * dr + wr * di);
                            *sin = -mid * (ei + wi * di - wr * dr);
                        }
                    }
                    // The norms of what was written, while in cache; entries 0 and M are
                    // written below.
                    let skip = (g == 0) as usize;
                    host::add_norms(
                        host::chunk_norms(&cos[skip..]),
                        host::chunk_norms(&sin[skip..]),
                    )
                },
            )
        })
        .collect();
    let z0 = z.data_at(0);
    // X_0 = Re Z_0 + Im Z_0 and X_M = Re Z_0 − Im Z_0 are real.
    lambda[0] = edge * (z0.0 + z0.1);
    lambda[half] = edge * (z0.0 - z0.1);
    z.data.recycle();
    let ends = host::chunk_norms(&[lambda[0], lambda[half]]);
    let sums = parts.into_iter().fold(ends, host::add_norms);
    (lambda, sums)
}

/// The inverse of [`atom_coefficients`] for a sparse coefficient vector: `x_j = Σ_a λ_a·φ_a(j)`
/// for `j < out.len()`, from the `(a, λ_a)` pairs (distinct `a < N`), each `x_j` handed to
/// `put` once, in parallel chunks.
///
/// With the Hermitian spectrum `H_k` (`H_0 = λ_0/√N`, `H_M = λ_M/√N`,
/// `H_k = (λ_k − i·λ_{M+k})/√(2N)`), `x_j = Σ_{k<N} H_k·e^{+2πi·jk/N}` is the inverse complex DFT
/// of `M` points of `Z_k = F_k + i·G_k` with `F_k = H_k + conj H_{M−k}` and
/// `G_k = (H_k − conj H_{M−k})·e^{2πi·k/N}`: `x_{2m} = Re z_m`, `x_{2m+1} = Im z_m`. Each atom
/// adds to at most two `Z_k`, so `Z` is built by scattering the pairs.
pub(crate) fn atom_signal<P>(
    atoms: impl Iterator<Item = (usize, f32)>,
    big: usize,
    out: &mut [f32],
    put: P,
) where
    P: Fn(&mut f32, f32) + Sync,
{
    let half = big / 2;
    let edge = (1.0 / big as f64).sqrt();
    let mid = (0.5 / big as f64).sqrt();
    let mut z = Split::pooled(half);
    z.re.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
    z.im.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
    for (a, v) in atoms {
        let v = v as f64;
        let (k, h) = match a {
            0 => (0, (v * edge, 0.0)),
            a if a == half => (half, (v * edge, 0.0)),
            a if a < half => (a, (v * mid, 0.0)),
            a => (a - half, (0.0, -v * mid)),
        };
        for (k, (r, i)) in half_spectrum_terms(k, h, big).into_iter().flatten() {
            z.re[k] += r as f32;
            z.im[k] += i as f32;
        }
    }
    // z_m = Σ_k Z_k·e^{+2πi·km/M} = swap(F(swap Z)): the loader hands the parts over swapped,
    // so s.im holds Re z_m = x_{2m} and s.re holds Im z_m = x_{2m+1}.
    let s = dft(half, Swapped(z));
    let rows = s.rows;
    let block = s.block();
    out.par_chunks_mut(2 * block * rows)
        .enumerate()
        .for_each(|(g, chunk)| {
            with_scratch(
                block * rows,
                #[inline(always)]
                |z, _| {
                    s.rows(g * block, &mut z.re, &mut z.im);
                    let last = chunk.len() / 2;
                    let mut pairs = chunk.chunks_exact_mut(2);
                    for ((slots, &even), &odd) in (&mut pairs).zip(&z.im).zip(&z.re) {
                        put(&mut slots[0], even);
                        put(&mut slots[1], odd);
                    }
                    if let Some(slot) = pairs.into_remainder().first_mut() {
                        put(slot, z.im[last]);
                    }
                },
            )
        });
    s.data.recycle();
}

/// The terms a half-spectrum value `H_k` (`0 ≤ k ≤ M`; `H_0`, `H_M` real) adds to the `Z` of
/// [`atom_signal`]: `(index, term)` pairs, one or two.
fn half_spectrum_terms(k: usize, h: (f64, f64), big: usize) -> [Option<(usize, (f64, f64))>; 2] {
    let half = big / 2;
    let (hr, hi) = h;
    if k == 0 {
        // Z_0 += H_0·(1 + i)
        return [Some((0, (hr, hr))), None];
    }
    if k == half {
        // Z_0 += H_M·(1 − i)
        return [Some((0, (hr, -hr))), None];
    }
    let t = 2.0 * PI * k as f64 / big as f64;
    let (c, s) = (t.cos(), t.sin());
    // At index k: H_k·(1 + i·e^{iθ}) = H_k·((1 − sin θ) + i·cos θ).
    let (ur, ui) = (1.0 - s, c);
    // At index M − k: conj(H_k)·(1 − i·e^{i(π − θ)}) = conj(H_k)·((1 + sin θ) + i·cos θ).
    let (vr, vi) = (1.0 + s, c);
    [
        Some((k, (hr * ur - hi * ui, hr * ui + hi * ur))),
        Some((half - k, (hr * vr + hi * vi, hr * vi - hi * vr))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: usize, seed: u64) -> Vec<f32> {
        crate::test_stream::xorshift(seed)
            .take(n)
            .map(|state| (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }

    /// `Σ_j x_j·e^{−2πi·jk/N}` in f64, directly.
    fn naive(x: &[f32], big: usize, k: usize) -> (f64, f64) {
        x.iter().enumerate().fold((0.0, 0.0), |(r, i), (j, &v)| {
            let t = -2.0 * PI * ((j * k) % big) as f64 / big as f64;
            (r + v as f64 * t.cos(), i + v as f64 * t.sin())
        })
    }

    /// `λ` by the definition, in f64.
    fn naive_atoms(x: &[f32], big: usize) -> Vec<f64> {
        let half = big / 2;
        let (edge, mid) = ((1.0 / big as f64).sqrt(), (2.0 / big as f64).sqrt());
        let mut lambda = vec![0.0f64; big];
        lambda[0] = edge * naive(x, big, 0).0;
        lambda[half] = edge * naive(x, big, half).0;
        for k in 1..half {
            let (r, i) = naive(x, big, k);
            lambda[k] = mid * r;
            lambda[half + k] = -mid * i;
        }
        lambda
    }

    const SIZES: [(usize, usize); 9] = [
        (1, 2),
        (2, 2),
        (3, 4),
        (8, 8),
        (20, 32),
        (1000, 2048),
        (2048, 2048),
        (3000, 4096),
        (5000, 8192),
    ];

    /// Direct sizes, the smallest four-step size (rows = cols) and rows ≠ cols; the norms
    /// taken on the way are those of the coefficients.
    #[test]
    fn atom_coefficients_match_the_definition() {
        for (n, big) in SIZES {
            let x = signal(n, n as u64);
            let norm: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let (got, sums) = atom_coefficients(&x, big);
            for (a, (g, want)) in got.iter().zip(naive_atoms(&x, big)).enumerate() {
                assert!(
                    (*g as f64 - want).abs() < 2e-6 * norm,
                    "N = {big}, atom {a}: {g} vs {want}"
                );
            }
            let (max, l2, l1) = host::finish_norms(sums, &got).unwrap();
            let want = host::norms(&got).unwrap();
            assert_eq!(max, want.0, "N = {big}");
            assert!((l2 - want.1).abs() <= 1e-12 * want.1, "N = {big}");
            assert!((l1 - want.2).abs() <= 1e-12 * want.2, "N = {big}");
        }
    }

    /// The basis is orthonormal: the sparse inverse of all coefficients is the signal.
    #[test]
    fn atom_signal_inverts_atom_coefficients() {
        for (n, big) in SIZES {
            let x = signal(n, 7 + n as u64);
            let (lambda, _) = atom_coefficients(&x, big);
            let energy: f64 = lambda.iter().map(|&v| (v as f64).powi(2)).sum();
            let want: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!(
                (energy - want).abs() < 1e-5 * want,
                "N = {big}: Σλ² = {energy} vs {want}"
            );
            let mut out = vec![f32::NAN; n];
            atom_signal(
                lambda.iter().copied().enumerate(),
                big,
                &mut out,
                |slot, v| *slot = v,
            );
            for (j, (a, b)) in out.iter().zip(&x).enumerate() {
                assert!((a - b).abs() < 1e-5, "N = {big}, j = {j}: {a} vs {b}");
            }
        }
    }

    /// One atom at a time: each basis function is rebuilt exactly where it is nonzero.
    #[test]
    fn each_atom_is_its_basis_function() {
        let big = 2048;
        let half = big / 2;
        for a in [0, 1, 5, half - 1, half, half + 1, half + 300, big - 1] {
            let mut out = vec![0.0; big];
            atom_signal([(a, 1.0)].into_iter(), big, &mut out, |slot, v| *slot = v);
            for (j, &v) in out.iter().enumerate() {
                let t = 2.0 * PI * ((a % half) * j % big) as f64 / big as f64;
                let want = match a {
                    0 => (1.0 / big as f64).sqrt(),
                    a if a == half => {
                        (1.0 / big as f64).sqrt() * if j % 2 == 0 { 1.0 } else { -1.0 }
                    }
                    a if a < half => (2.0 / big as f64).sqrt() * t.cos(),
                    _ => (2.0 / big as f64).sqrt() * t.sin(),
                };
                assert!(
                    (v as f64 - want).abs() < 1e-6,
                    "atom {a}, j = {j}: {v} vs {want}"
                );
            }
        }
    }
}
