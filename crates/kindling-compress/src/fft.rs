//! Host FFTs for [Fourier ATOMO](crate::Fourier): the real DFT of a gradient and its inverse in
//! f32, multi-threaded and cache-blocked.
//!
//! A real signal of `N = 2M` entries is transformed as the complex signal `z_m = x_{2m} +
//! i·x_{2m+1}` of `M` points plus one `O(N)` pass that separates the even and odd halves. The
//! complex DFT of `M = R·C` points runs in the four-step order (Bailey 1990): `C` transforms of
//! `R` points down the columns of the `R × C` matrix, a twiddle `e^{−2πi·n₂k₁/M}`, then `R`
//! transforms of `C` points. Each pass works on strips of [`STRIP`] columns, so its transforms
//! run in cache with every butterfly applied to [`STRIP`] contiguous lanes at once (vectorised by
//! the compiler), and strips go to rayon's threads. The first pass writes its results transposed
//! (16 × 16 blocks, in registers with AVX-512), so that the second reads and transforms each of
//! its strips in place, contiguous. The memory traffic is one read of the input, the write and
//! the in-place pass of the intermediate, and one read of the result; the results do not depend
//! on the thread count.
//!
//! The inverse transform is the forward one with real and imaginary parts swapped:
//! `conj(F(conj z)) = swap(F(swap z))`, and with split storage a swap is free. Its input, a
//! sparse spectrum, is never written densely: each task of the first pass builds its columns from
//! the terms that fall in them.

use std::f64::consts::PI;

use rayon::prelude::*;

use crate::{host, simd};

/// Columns per strip: one 64-byte cache line of f32 per row.
const STRIP: usize = 16;

/// Strips of input columns one task of the first four-step pass reads together.
const GROUP: usize = 4;

/// Transforms of fewer points than this run in one piece.
const FOUR_STEP_MIN: usize = 1 << 10;

/// Rows of its input a task of the four-step transform's first pass reads ahead
/// ([`Source::soon`]): found best of 4, 8 and 16 on a 2-core AMD EPYC.
const AHEAD: usize = 4;

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

/// A complex vector in split storage, borrowed.
struct SplitMut<'a> {
    re: &'a mut [f32],
    im: &'a mut [f32],
}

/// Runs `f` on this thread's two [`SCRATCH`] vectors, of `len` entries each (contents
/// unspecified), compiled for the widest vector unit ([`simd::wide!`]; pass `f` as an
/// `#[inline(always)]` closure, or it is compiled for the baseline). `f` must not start rayon
/// work (it would re-enter the scratch).
#[inline(always)]
fn with_scratch<R>(len: usize, f: impl FnOnce(SplitMut<'_>, SplitMut<'_>) -> R) -> R {
    SCRATCH.with_borrow_mut(|(a, b)| {
        for v in [&mut a.re, &mut a.im, &mut b.re, &mut b.im] {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        }
        let a = SplitMut {
            re: &mut a.re[..len],
            im: &mut a.im[..len],
        };
        let b = SplitMut {
            re: &mut b.re[..len],
            im: &mut b.im[..len],
        };
        simd::wide!(f(a, b))
    })
}

/// Buffers a thread keeps in its [`POOL`]: a transform of `2M` reals uses two of `M` f32 and
/// the coefficient vector of `2M`.
const POOL_BUFFERS: usize = 3;

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
    period: usize,
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
            period,
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
/// order) of `W` independent signals stored row-major (`[row][lane]`; one signal, or a strip of
/// [`STRIP`], each row then one vector register with AVX-512). Stages go two at a time
/// ([`two_stages`]): each row is loaded and stored once per pair of stages, with the same
/// operations in the same order as one stage at a time.
#[inline(always)]
fn butterflies<const W: usize>(re: &mut [f32], im: &mut [f32], stages: &Stages) {
    let (re, _) = re.as_chunks_mut::<W>();
    let (im, _) = im.as_chunks_mut::<W>();
    let rows = re.len();
    let mut h = 1;
    while 4 * h <= rows {
        two_stages(re, im, h, stages);
        h *= 4;
    }
    if h < rows {
        let (wr, wi) = (&stages.re[h - 1..2 * h - 1], &stages.im[h - 1..2 * h - 1]);
        for (bre, bim) in re.chunks_exact_mut(2 * h).zip(im.chunks_exact_mut(2 * h)) {
            let (ar, br) = bre.split_at_mut(h);
            let (ai, bi) = bim.split_at_mut(h);
            for (((((ar, ai), br), bi), &c), &s) in
                ar.iter_mut().zip(ai).zip(br).zip(bi).zip(wr).zip(wi)
            {
                row_butterflies(ar, ai, br, bi, c, s);
            }
        }
    }
}

/// The stages `h` and `2h` (`4h ≤ rows`) of [`butterflies`] in one pass: in each block of `4h`
/// rows, rows `k`, `h + k`, `2h + k`, `3h + k` (`k < h`) meet only each other in these two
/// stages, so they are loaded once, get stage `h`'s butterflies (`k` with `h + k`, `2h + k` with
/// `3h + k`, twiddle `w_h^k`) and then stage `2h`'s (`k` with `2h + k`, twiddle `w_{2h}^k`;
/// `h + k` with `3h + k`, twiddle `w_{2h}^{h+k}`), and are stored once: the arithmetic of the two
/// stages one after the other, bit for bit, with half the loads and stores.
#[inline(always)]
fn two_stages<const W: usize>(re: &mut [[f32; W]], im: &mut [[f32; W]], h: usize, stages: &Stages) {
    let (w1r, w1i) = (&stages.re[h - 1..2 * h - 1], &stages.im[h - 1..2 * h - 1]);
    let (w2r, w2i) = (
        &stages.re[2 * h - 1..3 * h - 1],
        &stages.im[2 * h - 1..3 * h - 1],
    );
    let (w3r, w3i) = (
        &stages.re[3 * h - 1..4 * h - 1],
        &stages.im[3 * h - 1..4 * h - 1],
    );
    for (bre, bim) in re.chunks_exact_mut(4 * h).zip(im.chunks_exact_mut(4 * h)) {
        let (ar, rest) = bre.split_at_mut(h);
        let (br, rest) = rest.split_at_mut(h);
        let (cr, dr) = rest.split_at_mut(h);
        let (ai, rest) = bim.split_at_mut(h);
        let (bi, rest) = rest.split_at_mut(h);
        let (ci, di) = rest.split_at_mut(h);
        for k in 0..h {
            let (c1, s1) = (w1r[k], w1i[k]);
            let (c2, s2) = (w2r[k], w2i[k]);
            let (c3, s3) = (w3r[k], w3i[k]);
            // The rows as values: vectors in registers, stored once.
            let (mut a_r, mut a_i, mut b_r, mut b_i) = (ar[k], ai[k], br[k], bi[k]);
            let (mut c_r, mut c_i, mut d_r, mut d_i) = (cr[k], ci[k], dr[k], di[k]);
            row_butterflies(&mut a_r, &mut a_i, &mut b_r, &mut b_i, c1, s1);
            row_butterflies(&mut c_r, &mut c_i, &mut d_r, &mut d_i, c1, s1);
            row_butterflies(&mut a_r, &mut a_i, &mut c_r, &mut c_i, c2, s2);
            row_butterflies(&mut b_r, &mut b_i, &mut d_r, &mut d_i, c3, s3);
            (ar[k], ai[k], br[k], bi[k]) = (a_r, a_i, b_r, b_i);
            (cr[k], ci[k], dr[k], di[k]) = (c_r, c_i, d_r, d_i);
        }
    }
}

/// [`butterfly`] on each of the `W` lanes of rows `a` and `b`, with the twiddle `c + i·s`.
#[inline(always)]
fn row_butterflies<const W: usize>(
    ar: &mut [f32; W],
    ai: &mut [f32; W],
    br: &mut [f32; W],
    bi: &mut [f32; W],
    c: f32,
    s: f32,
) {
    for j in 0..W {
        butterfly(&mut ar[j], &mut ai[j], &mut br[j], &mut bi[j], c, s);
    }
}

/// `dst[16·b + j] = src[16·j + b]`: the [`STRIP`] × [`STRIP`] block transposed, in registers
/// with AVX-512 ([`transpose_avx512`]), else lane by lane. Either way values are only moved.
#[inline(always)]
fn transpose(src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let (simd::Level::Avx512, Ok(src), Ok(dst)) = (
        simd::level(),
        <&[f32; STRIP * STRIP]>::try_from(src),
        <&mut [f32; STRIP * STRIP]>::try_from(&mut *dst),
    ) {
        // SAFETY: `level` returns `Avx512` only when the CPU has AVX-512 F.
        unsafe { transpose_avx512(src, dst) };
        return;
    }
    for (j, row) in src.chunks_exact(STRIP).enumerate() {
        for (b, &v) in row.iter().enumerate() {
            dst[STRIP * b + j] = v;
        }
    }
}

/// `out[16·b + j] = src[16·j + b]`: the 16 × 16 transpose in four rounds of two-register shuffles
/// (32-bit and 64-bit interleaves within 128-bit lanes, then two rounds of 128-bit lane
/// selections), 64 shuffles for 256 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose_avx512(src: &[f32; STRIP * STRIP], out: &mut [f32; STRIP * STRIP]) {
    use std::arch::x86_64::*;
    let r: [__m512; 16] = std::array::from_fn(|j| {
        // SAFETY: row j of `src` holds 16 f32.
        unsafe { _mm512_loadu_ps(src.as_ptr().add(STRIP * j)) }
    });
    // Rows 2p and 2p + 1 interleaved: in each 128-bit lane, t[2p] holds entries (0, 1) of both
    // rows and t[2p + 1] entries (2, 3).
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4q + c], in lane l: entry 4l + c of rows 4q .. 4q + 4.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (q, c) = (i / 4, i % 4);
        let (a, b) = (
            _mm512_castps_pd(t[4 * q + c / 2]),
            _mm512_castps_pd(t[4 * q + 2 + c / 2]),
        );
        _mm512_castpd_ps(if c % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // v[8h + 4e + c] (h: rows 0..8 or 8..16): lanes (entry 8e' + 4e + c) for e' = 0, 1 of
    // rows 8h .. 8h + 4, then of rows 8h + 4 .. 8h + 8.
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (h, e, c) = (i / 8, (i / 4) % 2, i % 4);
        let (a, b) = (u[8 * h + c], u[8 * h + 4 + c]);
        if e == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    });
    // Column 8e' + 4e + c: its entries 0..4, 4..8 from v[4e + c], 8..16 from v[8 + 4e + c].
    for (b, row) in out.chunks_exact_mut(STRIP).enumerate() {
        let (high, low) = (b / 8, b % 8);
        let (a, c) = (v[low], v[8 + low]);
        let column = if high == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, c)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, c)
        };
        // SAFETY: `row` holds 16 f32.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr(), column) };
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
        (4 * STRIP).min(self.cols)
    }
}

/// The input of [`dft`].
trait Source: Sync + Sized {
    /// Writes `z_j, …, z_{j+re.len()−1}` into `re`, `im`.
    fn load(&self, j: usize, re: &mut [f32], im: &mut [f32]);

    /// Hints that `z_j, …, z_{j+count−1}` are loaded soon; by default nothing.
    #[inline(always)]
    fn soon(&self, _j: usize, _count: usize) {}

    /// Fills a task's block of the four-step transform's first pass: for the `rows × cols`
    /// matrix `z[n₁·cols + n₂]` (`rows = rev.len()`), columns `first ..` in strips of
    /// [`STRIP`] (`re`, `im` are `[strip][row][lane]`), row `n₁` at row `rev[n₁]`. Row
    /// `n₁ + `[`AHEAD`] is announced ([`Source::soon`]) as row `n₁` is read: the rows are
    /// `cols` entries apart, too far for the hardware's prefetcher.
    #[inline(always)]
    fn fill(&self, first: usize, cols: usize, rev: &[usize], re: &mut [f32], im: &mut [f32]) {
        let rows = rev.len();
        let width = re.len() / rows;
        for (n1, &row) in rev.iter().enumerate() {
            if n1 + AHEAD < rows {
                self.soon((n1 + AHEAD) * cols + first, width);
            }
            for (g, (tre, tim)) in re
                .chunks_exact_mut(STRIP * rows)
                .zip(im.chunks_exact_mut(STRIP * rows))
                .enumerate()
            {
                let lanes = row * STRIP..(row + 1) * STRIP;
                self.load(
                    n1 * cols + first + g * STRIP,
                    &mut tre[lanes.clone()],
                    &mut tim[lanes],
                );
            }
        }
    }
}

/// A real signal read as complex pairs `z_j = x_{2j} + i·x_{2j+1}`, zero past its end.
struct Pairs<'a>(&'a [f32]);

impl Source for Pairs<'_> {
    #[inline(always)]
    fn soon(&self, j: usize, count: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(pairs) = self.0.get(2 * j..2 * (j + count)) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            for line in pairs.chunks(16) {
                // SAFETY: a prefetch has no effect on memory; the address is inside the slice.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
        }
    }

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

/// A sparse complex vector `Z` read with its parts swapped (`Im Z + i·Re Z`: the forward
/// transform of the swapped input, swapped back, is the inverse transform), given by its terms:
/// `Z_k` is the sum of the terms at `k`, in their order. The terms are sorted by the task of
/// the first four-step pass whose columns hold them, so each task builds its block in cache
/// and no dense `Z` is ever written.
struct SwappedTerms {
    /// `(k, Re, Im)` for each chunk of [`TERM_CHUNK`] atoms (in order), for each task's
    /// columns (one list when the transform is direct).
    chunks: Vec<Vec<Vec<(u32, f32, f32)>>>,
}

/// Atoms whose terms one task of [`SwappedTerms::new`] sorts.
const TERM_CHUNK: usize = 1 << 12;

impl SwappedTerms {
    /// The terms of the atoms `(positions, values)` (their indices below `len`, the transform's
    /// length), sorted into the tasks of [`dft`] in parallel chunks of atoms.
    fn new<T>(
        len: usize,
        positions: &[u32],
        values: &[f32],
        terms: impl Fn(usize, f32) -> T + Sync,
    ) -> Self
    where
        T: IntoIterator<Item = (usize, (f64, f64))>,
    {
        let cols = four_step(len).map(|(_, cols)| cols);
        let task_of = |k: usize| cols.map_or(0, |cols| k % cols / (GROUP * STRIP));
        let count = cols.map_or(1, |cols| cols.div_ceil(GROUP * STRIP));
        let chunks = positions
            .par_chunks(TERM_CHUNK)
            .zip(values.par_chunks(TERM_CHUNK))
            .map(|(positions, values)| {
                let mut tasks = vec![Vec::new(); count];
                for (&a, &v) in positions.iter().zip(values) {
                    for (k, (r, i)) in terms(a as usize, v) {
                        tasks[task_of(k)].push((k as u32, r as f32, i as f32));
                    }
                }
                tasks
            })
            .collect();
        Self { chunks }
    }

    /// Task `task`'s terms, in order.
    fn task(&self, task: usize) -> impl Iterator<Item = &(u32, f32, f32)> {
        self.chunks.iter().flat_map(move |tasks| &tasks[task])
    }
}

impl Source for SwappedTerms {
    fn load(&self, j: usize, re: &mut [f32], im: &mut [f32]) {
        re.fill(0.0);
        im.fill(0.0);
        let span = j..j + re.len();
        for &(k, r, i) in self.chunks.iter().flatten().flatten() {
            if span.contains(&(k as usize)) {
                re[k as usize - j] += i;
                im[k as usize - j] += r;
            }
        }
    }

    #[inline(always)]
    fn fill(&self, first: usize, cols: usize, rev: &[usize], re: &mut [f32], im: &mut [f32]) {
        re.fill(0.0);
        im.fill(0.0);
        let rows = rev.len();
        for &(k, r, i) in self.task(first / (GROUP * STRIP)) {
            let (n1, n2) = (k as usize / cols, k as usize % cols - first);
            let at = n2 / STRIP * STRIP * rows + rev[n1] * STRIP + n2 % STRIP;
            re[at] += i;
            im[at] += r;
        }
    }
}

/// The `rows × cols` shape of the four-step transform of `len` points (`rows ≤ cols`, both
/// powers of two), or `None` when it runs in one piece.
fn four_step(len: usize) -> Option<(usize, usize)> {
    if len < FOUR_STEP_MIN {
        return None;
    }
    let rows = 1 << (len.trailing_zeros() / 2);
    Some((rows, len / rows))
}

/// The unnormalised forward DFT `Z_k = Σ_j z_j·e^{−2πi·jk/M}` of `M = len` points (a power of
/// two).
fn dft(len: usize, source: impl Source) -> Spectrum {
    let Some((rows, cols)) = four_step(len) else {
        let mut z = Split::zeros(len);
        source.load(0, &mut z.re, &mut z.im);
        for (i, j) in bit_reversal(len).into_iter().enumerate() {
            if i < j {
                z.re.swap(i, j);
                z.im.swap(i, j);
            }
        }
        butterflies::<1>(&mut z.re, &mut z.im, &Stages::new(len));
        return Spectrum {
            data: z,
            rows: len,
            cols: 1,
        };
    };
    let powers = Powers::new(len);
    // Step 1: the column transforms of the rows × cols matrix z[n₁·cols + n₂], times
    // e^{−2πi·n₂k₁/M}. A task takes GROUP strips of input columns (n₂ = first + 16g + b), so
    // that each input row is read GROUP·STRIP entries at a time, and transforms them in its
    // scratch ([g][k₁][b]). It writes them transposed, for the second pass: into
    // t[k₁ / 16][n₂][k₁ % 16], where the strip of 16 values of k₁ that the second pass
    // transforms together is contiguous.
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
        let width = (GROUP * STRIP).min(cols);
        // Each task's columns in every strip of k₁: t[k₁ / 16][first ..][..].
        let mut tasks: Vec<Vec<(&mut [f32], &mut [f32])>> =
            (0..cols / width).map(|_| Vec::new()).collect();
        for (sre, sim) in
            t.re.chunks_exact_mut(STRIP * cols)
                .zip(t.im.chunks_exact_mut(STRIP * cols))
        {
            for (task, part) in tasks.iter_mut().zip(
                sre.chunks_exact_mut(width * STRIP)
                    .zip(sim.chunks_exact_mut(width * STRIP)),
            ) {
                task.push(part);
            }
        }
        tasks
            .into_par_iter()
            .enumerate()
            .for_each(|(group, mut out)| {
                with_scratch(
                    width * rows,
                    #[inline(always)]
                    |work, _| {
                        let first = group * width;
                        source.fill(first, cols, &rev, work.re, work.im);
                        for (g, (tre, tim)) in work
                            .re
                            .chunks_exact_mut(STRIP * rows)
                            .zip(work.im.chunks_exact_mut(STRIP * rows))
                            .enumerate()
                        {
                            butterflies::<STRIP>(tre, tim, &stages);
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
                            // Block (k₁ ∈ 16j .., b) transposed into t[j][first + b][..].
                            let lanes = g * STRIP * STRIP..(g + 1) * STRIP * STRIP;
                            for ((ore, oim), (bre, bim)) in out.iter_mut().zip(
                                tre.chunks_exact(STRIP * STRIP)
                                    .zip(tim.chunks_exact(STRIP * STRIP)),
                            ) {
                                transpose(bre, &mut ore[lanes.clone()]);
                                transpose(bim, &mut oim[lanes.clone()]);
                            }
                        }
                    },
                )
            });
    }
    // Step 2: the row transforms, in place: for each strip of k₁ (contiguous in t), the
    // cols-point transforms over n₂ after the bit-reversal permutation of its rows, leaving
    // t[k₁ / 16][k₂][k₁ % 16].
    {
        let (stages, rev) = (Stages::new(cols), bit_reversal(cols));
        t.re.par_chunks_mut(STRIP * cols)
            .zip(t.im.par_chunks_mut(STRIP * cols))
            .for_each(|(sre, sim)| {
                simd::wide!({
                    for (i, &j) in rev.iter().enumerate() {
                        if i < j {
                            for v in [&mut *sre, &mut *sim] {
                                let (low, high) = v.split_at_mut(j * STRIP);
                                low[i * STRIP..(i + 1) * STRIP].swap_with_slice(&mut high[..STRIP]);
                            }
                        }
                    }
                    butterflies::<STRIP>(sre, sim, &stages);
                })
            });
    }
    Spectrum {
        data: t,
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
    let rows = z.rows;
    let local = roots(rows, big);
    let powers = Powers::new(big);
    let mut lambda = take(big);
    let (cos, sin) = lambda.split_at_mut(half);
    let block = z.block();
    // Row blocks g and count − 1 − g mirror each other: one task gathers both and writes both.
    let mut low: Vec<_> = cos
        .chunks_mut(block * rows)
        .zip(sin.chunks_mut(block * rows))
        .collect();
    let count = low.len();
    let mut high = low.split_off(count.div_ceil(2));
    let pairs: Vec<_> = low
        .into_iter()
        .enumerate()
        .map(|(g, out)| (g, out, high.pop()))
        .collect();
    let separate = Separation {
        z: &z,
        local: &local,
        powers: &powers,
        mid,
        block,
    };
    let mut parts: Vec<(usize, (u32, f64, f64))> = pairs
        .into_par_iter()
        .flat_map_iter(|(g, (cos, sin), mirrored)| {
            with_scratch(
                block * rows,
                #[inline(always)]
                |here, mirror| {
                    z.rows(g * block, here.re, here.im);
                    let mut parts = Vec::with_capacity(2);
                    if let Some((mcos, msin)) = mirrored {
                        let h = count - 1 - g;
                        z.rows(h * block, mirror.re, mirror.im);
                        parts.push((g, separate.block(g, &here, &mirror, cos, sin)));
                        parts.push((h, separate.block(h, &mirror, &here, mcos, msin)));
                    } else {
                        // The middle block is its own mirror.
                        parts.push((g, separate.block(g, &here, &here, cos, sin)));
                    }
                    parts
                },
            )
        })
        .collect();
    // Summed in block order, whichever task wrote a block.
    parts.sort_unstable_by_key(|&(g, _)| g);
    let z0 = z.data_at(0);
    // X_0 = Re Z_0 + Im Z_0 and X_M = Re Z_0 − Im Z_0 are real.
    lambda[0] = edge * (z0.0 + z0.1);
    lambda[half] = edge * (z0.0 - z0.1);
    z.data.recycle();
    let ends = host::chunk_norms(&[lambda[0], lambda[half]]);
    let sums = parts
        .into_iter()
        .map(|(_, part)| part)
        .fold(ends, host::add_norms);
    (lambda, sums)
}

/// The even/odd separation of [`atom_coefficients`], a block of rows at a time.
struct Separation<'a> {
    z: &'a Spectrum,
    /// `e^{−2πi·k₁/N}` for `k₁ < rows`.
    local: &'a Split,
    /// Those of the period `N`.
    powers: &'a Powers,
    /// `√(2/N)`.
    mid: f32,
    /// Rows per block.
    block: usize,
}

impl Separation<'_> {
    /// Row block `g` (rows `k₂ ∈ [g·block, (g + 1)·block)`) of the coefficients into `cos`,
    /// `sin`, from its rows of `Z` (`here`) and the mirror rows `cols − 1 − k₂` (`mirror`, in
    /// the same order as [`Spectrum::rows`] gathers them), with the norms of what it wrote.
    #[inline(always)]
    fn block(
        &self,
        g: usize,
        here: &SplitMut<'_>,
        mirror: &SplitMut<'_>,
        cos: &mut [f32],
        sin: &mut [f32],
    ) -> (u32, f64, f64) {
        let (z, local, mid, block) = (self.z, self.local, self.mid, self.block);
        let (rows, cols) = (z.rows, z.cols);
        let first = g * block;
        for (r, (cos, sin)) in cos.chunks_mut(rows).zip(sin.chunks_mut(rows)).enumerate() {
            let k2 = first + r;
            let row = r * rows..(r + 1) * rows;
            let (ar, ai) = (&here.re[row.clone()], &here.im[row]);
            let back = (block - 1 - r) * rows;
            let (bc, bs) = self.powers.at(k2 * rows);
            let (bc, bs) = (bc as f32, bs as f32);
            // k₁ = 0: Z_{M−k} is the first entry of row cols − k₂.
            (cos[0], sin[0]) = atom(
                (ar[0], ai[0]),
                z.data_at((cols - k2) % cols * rows),
                (local.re[0], local.im[0]),
                (bc, bs),
                mid,
            );
            // k₁ ≥ 1: row cols − 1 − k₂ backwards from its end.
            let mirrored = back + 1..back + rows;
            let (mr, mi) = (&mirror.re[mirrored.clone()], &mirror.im[mirrored]);
            for (((((cos, sin), (&ar, &ai)), (&lr, &li)), &br), &bi) in cos[1..]
                .iter_mut()
                .zip(&mut sin[1..])
                .zip(ar[1..].iter().zip(&ai[1..]))
                .zip(local.re[1..].iter().zip(&local.im[1..]))
                .zip(mr.iter().rev())
                .zip(mi.iter().rev())
            {
                (*cos, *sin) = atom((ar, ai), (br, bi), (lr, li), (bc, bs), mid);
            }
        }
        // The norms of what was written, while in cache; entries 0 and M are written by the
        // caller.
        let skip = (g == 0) as usize;
        host::add_norms(
            host::chunk_norms(&cos[skip..]),
            host::chunk_norms(&sin[skip..]),
        )
    }
}

/// The coefficients `√(2/N)·(Re X_k, −Im X_k)` of [`atom_coefficients`] from `a = Z_k` and
/// `b = Z_{M−k}`: `X_k = E − i·w·D` with `E = (a + conj b)/2`, `D = (a − conj b)/2` and
/// `w = e^{−2πi·k/N}`, the product of the row's `base` and the entry's `local` root.
#[inline(always)]
fn atom(
    (ar, ai): (f32, f32),
    (br, bi): (f32, f32),
    local: (f32, f32),
    base: (f32, f32),
    mid: f32,
) -> (f32, f32) {
    let ((bc, bs), (lr, li)) = (base, local);
    let bi = -bi;
    let (er, ei) = (0.5 * (ar + br), 0.5 * (ai + bi));
    let (dr, di) = (0.5 * (ar - br), 0.5 * (ai - bi));
    let (wr, wi) = (bc * lr - bs * li, bc * li + bs * lr);
    // −i·w·D = (wi·dr + wr·di) + i·(wi·di − wr·dr)
    (
        mid * (er + wi * dr + wr * di),
        -mid * (ei + wi * di - wr * dr),
    )
}

/// The inverse of [`atom_coefficients`] for a sparse coefficient vector: `x_j = Σ_a λ_a·φ_a(j)`
/// for `j < out.len()`, from the atoms `a = positions[i]` (distinct, below `N`) and their
/// `λ_a = values[i]`, each `x_j` handed to `put` once, in parallel chunks.
///
/// With the Hermitian spectrum `H_k` (`H_0 = λ_0/√N`, `H_M = λ_M/√N`,
/// `H_k = (λ_k − i·λ_{M+k})/√(2N)`), `x_j = Σ_{k<N} H_k·e^{+2πi·jk/N}` is the inverse complex DFT
/// of `M` points of `Z_k = F_k + i·G_k` with `F_k = H_k + conj H_{M−k}` and
/// `G_k = (H_k − conj H_{M−k})·e^{2πi·k/N}`: `x_{2m} = Re z_m`, `x_{2m+1} = Im z_m`. Each atom
/// adds to at most two `Z_k`, so `Z` is built by scattering the pairs.
pub(crate) fn atom_signal<T: Send, P>(
    positions: &[u32],
    values: &[f32],
    big: usize,
    out: &mut [T],
    put: P,
) where
    P: Fn(&mut T, f32) + Sync,
{
    let half = big / 2;
    let edge = (1.0 / big as f64).sqrt();
    let mid = (0.5 / big as f64).sqrt();
    let powers = Powers::new(big);
    let terms = |a: usize, v: f32| {
        let v = v as f64;
        let (k, h) = match a {
            0 => (0, (v * edge, 0.0)),
            a if a == half => (half, (v * edge, 0.0)),
            a if a < half => (a, (v * mid, 0.0)),
            a => (a - half, (0.0, -v * mid)),
        };
        half_spectrum_terms(k, h, &powers).into_iter().flatten()
    };
    // z_m = Σ_k Z_k·e^{+2πi·km/M} = swap(F(swap Z)): the source hands the parts over swapped,
    // so s.im holds Re z_m = x_{2m} and s.re holds Im z_m = x_{2m+1}.
    let s = dft(half, SwappedTerms::new(half, positions, values, terms));
    let rows = s.rows;
    let block = s.block();
    out.par_chunks_mut(2 * block * rows)
        .enumerate()
        .for_each(|(g, chunk)| {
            with_scratch(
                block * rows,
                #[inline(always)]
                |z, _| {
                    s.rows(g * block, z.re, z.im);
                    let last = chunk.len() / 2;
                    let mut pairs = chunk.chunks_exact_mut(2);
                    for ((slots, &even), &odd) in (&mut pairs).zip(&*z.im).zip(&*z.re) {
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
/// [`atom_signal`]: `(index, term)` pairs, one or two. `powers` are those of the period `N`.
fn half_spectrum_terms(
    k: usize,
    h: (f64, f64),
    powers: &Powers,
) -> [Option<(usize, (f64, f64))>; 2] {
    let half = powers.period / 2;
    let (hr, hi) = h;
    if k == 0 {
        // Z_0 += H_0·(1 + i)
        return [Some((0, (hr, hr))), None];
    }
    if k == half {
        // Z_0 += H_M·(1 − i)
        return [Some((0, (hr, -hr))), None];
    }
    // e^{iθ} with θ = 2πk/N, the conjugate of the table's e^{−iθ}.
    let (c, s) = powers.at(k);
    let s = -s;
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

    /// Every atom's position, `0..big`.
    fn every(big: usize) -> Vec<u32> {
        (0..big as u32).collect()
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
            atom_signal(&every(big), &lambda, big, &mut out, |slot, v| *slot = v);
            for (j, (a, b)) in out.iter().zip(&x).enumerate() {
                assert!((a - b).abs() < 1e-5, "N = {big}, j = {j}: {a} vs {b}");
            }
        }
    }

    /// A transform of several first-pass tasks in each direction (2¹⁷ points: 256 × 512, eight
    /// tasks of 64 columns): coefficients sampled across every task against the definition, and
    /// the inverse of all of them.
    #[test]
    fn multi_task_transforms_match_the_definition() {
        let (n, big) = (200_000, 1 << 18);
        let x = signal(n, 17);
        let norm: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let (lambda, _) = atom_coefficients(&x, big);
        let (half, edge, mid) = (
            big / 2,
            (1.0 / big as f64).sqrt(),
            (2.0 / big as f64).sqrt(),
        );
        for k in (0..half)
            .step_by(half / 24 + 1)
            .chain([1, 63, 64, 511, 512, half - 1])
        {
            let (r, i) = naive(&x, big, k);
            let want = if k == 0 {
                (edge * r, None)
            } else {
                (mid * r, Some(-mid * i))
            };
            assert!((lambda[k] as f64 - want.0).abs() < 2e-6 * norm, "atom {k}");
            if let Some(want) = want.1 {
                let got = lambda[half + k] as f64;
                assert!((got - want).abs() < 2e-6 * norm, "atom {}", half + k);
            }
        }
        let mut out = vec![f32::NAN; n];
        atom_signal(&every(big), &lambda, big, &mut out, |slot, v| *slot = v);
        for (j, (a, b)) in out.iter().zip(&x).enumerate() {
            assert!((a - b).abs() < 1e-5, "j = {j}: {a} vs {b}");
        }
    }

    /// One atom at a time: each basis function is rebuilt exactly where it is nonzero.
    #[test]
    fn each_atom_is_its_basis_function() {
        let big = 2048;
        let half = big / 2;
        for a in [0, 1, 5, half - 1, half, half + 1, half + 300, big - 1] {
            let mut out = vec![0.0; big];
            atom_signal(&[a as u32], &[1.0], big, &mut out, |slot, v| *slot = v);
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
