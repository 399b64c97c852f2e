//! Codec speed on a 4 M-entry f32 gradient (2048 × 2048) on Flex, in one run, against the
//! physical floor: **one host memcpy of the gradient** (16 MiB) is the unit. A codec reads the
//! gradient once and writes a payload 16–32× smaller, so encode + decode can approach 2–3
//! memcpys. Also printed: one burn elementwise pass `g*c` (what each tensor op costs on Flex),
//! the extra memory each codec allocates at its peak from cold and what it keeps for its next
//! call (a counting allocator), and spectral ATOMO and PowerSGD on matrices.
//!
//! `cargo bench -p kindling-compress --bench codecs` prints divan's table, then the summary with
//! 1 and all threads, then one line per codec for scripts:
//! `result codec=NAME enc_dec_memcpy=X bits_per_entry=Y` (all threads).
//!
//! `KINDLING_BENCH_CODEC=NAME` limits the summary to one codec (for profiling);
//! `KINDLING_BENCH_CODEC=spectral` runs only the matrix codecs.
//!
//! Each row's unit is measured on both sides of it (the faster of the two is used, printed as
//! `unit ms`): this machine's memory bandwidth drifts by up to 2× within minutes.
//!
//! Each encode gets a gradient tensor that owns its buffer, as one fresh from `backward` does, so
//! reading it costs no copy; decoding builds a new tensor.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use kindling_compress::powersgd::{PowerSgd, PowerSgdConfig};
use kindling_compress::rand::SeedableRng;
use kindling_compress::rand::rngs::ChaCha8Rng;
use kindling_compress::*;

/// Counts live bytes and their peak, to report each codec's extra memory.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SIDE: usize = 2048;
const N: usize = SIDE * SIDE;

fn gradient_data(rows: usize, cols: usize) -> TensorData {
    let device = Device::flex();
    device.seed(1);
    Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 1.0), &device).into_data()
}

/// A tensor that owns its buffer (as a gradient fresh from `backward`).
fn fresh(data: &TensorData) -> Tensor<2> {
    Tensor::from_data(data.clone(), &Device::flex())
}

fn sync(t: &Tensor<2>) {
    t.device().sync().expect("sync");
}

type Encode = Box<dyn FnMut(Tensor<2>, &mut ChaCha8Rng) -> Payload + Send>;
type Decode = Box<dyn Fn(&Payload) -> Tensor<2> + Send>;

/// A codec under test, type-erased for the tables.
struct Case {
    /// The name in `result` lines (no spaces).
    name: &'static str,
    encode: Encode,
    decode: Decode,
}

fn case<C: Compressor + Clone + Send + 'static>(name: &'static str, codec: C) -> Case {
    let mut enc = codec.clone();
    Case {
        name,
        encode: Box::new(move |g, r| enc.compress(g, r).expect("encode")),
        decode: Box::new(move |p| codec.decompress(p, &Device::flex()).expect("decode")),
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("identity", Identity),
        case("half-f16", Half::new(HalfFormat::F16)),
        case("sign", Sign),
        case("scaled-sign", ScaledSign),
        case("qsgd-s1", Qsgd::new(1).unwrap()),
        case(
            "qsgd-s16-b512",
            Qsgd::new(16).unwrap().with_bucket(512).unwrap(),
        ),
        case(
            "qsgd-s16-b512-fixed",
            Qsgd::new(16)
                .unwrap()
                .with_bucket(512)
                .unwrap()
                .with_coding(LevelCoding::Fixed),
        ),
        case("terngrad", TernGrad::new()),
        case(
            "terngrad-base3",
            TernGrad::new().with_packing(TritPacking::Base3),
        ),
        case("top-k-1pct", TopK::new(Count::Fraction(0.01)).unwrap()),
        case(
            "random-k-1pct",
            RandomK::new(Count::Fraction(0.01)).unwrap(),
        ),
        case(
            "atomo-entry-qsgd-budget",
            Atomo::new(EntryWise, Budget::QsgdEquivalent).unwrap(),
        ),
        case(
            "atomo-fourier-1pct",
            Atomo::new(Fourier, Budget::Fraction(0.01)).unwrap(),
        ),
        case(
            "ef-top-k-1pct",
            ErrorFeedback::new(TopK::new(Count::Fraction(0.01)).unwrap()),
        ),
    ]
}

#[divan::bench(sample_count = 10)]
fn memcpy(bencher: divan::Bencher) {
    let src = vec![1.0f32; N];
    let mut dst = vec![0.0f32; N];
    bencher.bench_local(|| dst.copy_from_slice(divan::black_box(&src)));
}

#[divan::bench(sample_count = 5)]
fn elementwise_pass(bencher: divan::Bencher) {
    let g = fresh(&gradient_data(SIDE, SIDE));
    bencher.bench_local(|| sync(&(g.clone() * 1.5)));
}

#[divan::bench(args = ["sign", "qsgd-s16-b512", "terngrad", "top-k-1pct"], sample_count = 5)]
fn encode_decode(bencher: divan::Bencher, name: &str) {
    let data = gradient_data(SIDE, SIDE);
    let mut c = cases().into_iter().find(|c| c.name == name).expect("case");
    let mut r = ChaCha8Rng::seed_from_u64(0);
    bencher
        .with_inputs(|| fresh(&data))
        .bench_local_values(|g| sync(&(c.decode)(&(c.encode)(g, &mut r))));
}

/// Fastest of `reps` timed runs of `f` (after one warm-up), each given a fresh input: the
/// minimum is the figure least disturbed by other load on a shared machine.
fn best<I>(mut input: impl FnMut() -> I, mut f: impl FnMut(I), reps: usize) -> f64 {
    f(input());
    let t: Vec<f64> = (0..reps)
        .map(|_| {
            let i = input();
            let s = Instant::now();
            f(i);
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.into_iter().fold(f64::INFINITY, f64::min)
}

/// Bytes allocated at the peak of `f` beyond what was live before it.
fn peak_extra(f: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed) - before
}

struct Row {
    enc: f64,
    dec: f64,
    bits: f64,
    peak: usize,
    kept: usize,
}

fn measure(c: &mut Case, data: &TensorData) -> Row {
    let mut r = ChaCha8Rng::seed_from_u64(0);
    let payload = (c.encode)(fresh(data), &mut r);
    let bits = 8.0 * payload.wire_bytes() as f64 / N as f64;
    let enc = best(|| fresh(data), |g| drop((c.encode)(g, &mut r)), 7);
    let dec = best(|| (), |_| sync(&(c.decode)(&payload)), 7);
    // From cold: without the work buffers a codec keeps between calls.
    Fourier::release_work_buffers();
    let before = LIVE.load(Ordering::Relaxed);
    let g = fresh(data);
    let peak = peak_extra(|| drop((c.decode)(&(c.encode)(g, &mut r))));
    let kept = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    Row {
        enc,
        dec,
        bits,
        peak,
        kept,
    }
}

/// One host memcpy of the gradient, the fastest of 15.
fn unit(src: &[f32], dst: &mut [f32]) -> f64 {
    best(
        || (),
        |_| dst.copy_from_slice(std::hint::black_box(src)),
        15,
    )
}

fn main() {
    let only = std::env::var("KINDLING_BENCH_CODEC").ok();
    if only.is_none() {
        divan::main();
    }
    let data = gradient_data(SIDE, SIDE);
    let src = vec![1.0f32; N];
    let mut dst = vec![0.0f32; N];
    let memcpy = unit(&src, &mut dst);
    let g = fresh(&data);
    let pass = best(|| (), |_| sync(&(g.clone() * 1.5)), 9);
    let mut r = ChaCha8Rng::seed_from_u64(0);
    let randomness = best(|| (), |_| drop(uniforms(&mut r, N, &Device::flex())), 9);
    let threads = rayon::current_num_threads();
    println!(
        "\n4 M-entry gradient ({SIDE}×{SIDE}, Flex). Unit: one host memcpy of the gradient = {:.2} ms \
         ({:.1} GB/s); one burn pass g*c = {:.2} ms = {:.1} memcpys.",
        memcpy * 1e3,
        (2 * 4 * N) as f64 / memcpy / 1e9,
        pass * 1e3,
        pass / memcpy
    );
    println!(
        "The stochastic codecs' randomness: {N} counter-based uniforms = {:.2} ms = {:.1} memcpys.",
        randomness * 1e3,
        randomness / memcpy
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "codec",
        "threads",
        "enc ms",
        "dec ms",
        "enc+dec",
        "unit ms",
        "memcpys",
        "g*c",
        "peak MiB",
        "kept MiB",
        "bits/entry"
    );
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut results = Vec::new();
    for mut c in cases() {
        if only.as_deref().is_some_and(|name| name != c.name) {
            continue;
        }
        for label in ["1", "all"] {
            // The unit again on each side of the row (the fastest of the two): this machine's
            // memory bandwidth drifts within a run, and a ratio to a unit measured minutes
            // earlier would carry that drift.
            let before = unit(&src, &mut dst);
            let row = if label == "1" {
                one.install(|| measure(&mut c, &data))
            } else {
                measure(&mut c, &data)
            };
            let memcpy = before.min(unit(&src, &mut dst));
            let both = row.enc + row.dec;
            println!(
                "{:<24} {:>8} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>9.2} {:>9.2} {:>9.1} {:>9.1} {:>10.3}",
                c.name,
                if label == "1" {
                    "1".to_string()
                } else {
                    threads.to_string()
                },
                row.enc * 1e3,
                row.dec * 1e3,
                both * 1e3,
                memcpy * 1e3,
                both / memcpy,
                both / pass,
                row.peak as f64 / (1 << 20) as f64,
                row.kept as f64 / (1 << 20) as f64,
                row.bits
            );
            if label == "all" {
                results.push((c.name, both / memcpy, row.bits));
            }
        }
    }
    println!();
    for (name, memcpys, bits) in results {
        println!("result codec={name} enc_dec_memcpy={memcpys:.2} bits_per_entry={bits:.4}");
    }
    if only.as_deref().is_some_and(|name| name != "spectral") {
        return;
    }
    // An MLP layer's gradient, as the digits example's 64 × 256 first layer with its 2 atoms:
    // one-sided Jacobi (preconditioned by a QR, the layer being 4× wider than tall).
    let layer = gradient_data(64, 256);
    let mut c = case(
        "spectral",
        Atomo::new(Spectral::full(), Budget::Atoms(2.0)).unwrap(),
    );
    let mut r = ChaCha8Rng::seed_from_u64(0);
    let t = best(
        || fresh(&layer),
        |g| sync(&(c.decode)(&(c.encode)(g, &mut r))),
        20,
    );
    println!(
        "\nspectral ATOMO of a 64 × 256 MLP layer (2 atoms), full SVD, encode+decode: {:.3} ms",
        t * 1e3
    );
    println!("\nspectral ATOMO (budget 4 atoms) and PowerSGD, encode+decode:");
    for side in [512, 1024] {
        let m = gradient_data(side, side);
        let unit = memcpy * (side * side) as f64 / N as f64;
        for (label, atoms) in [
            ("full SVD", Spectral::full()),
            ("rank-8 randomized", Spectral::truncated(8, 2).unwrap()),
        ] {
            let mut c = case("spectral", Atomo::new(atoms, Budget::Atoms(4.0)).unwrap());
            let mut r = ChaCha8Rng::seed_from_u64(0);
            let t = best(
                || fresh(&m),
                |g| sync(&(c.decode)(&(c.encode)(g, &mut r))),
                3,
            );
            println!(
                "  atomo spectral {side}², {label:<18} {:>10.1} ms ({:.0} memcpys of {side}²)",
                t * 1e3,
                t / unit
            );
        }
    }
    let m = gradient_data(1024, 1024);
    for rank in 1..=4 {
        let config = PowerSgdConfig::new(rank).unwrap();
        let mut state = PowerSgd::new(&config, 1024, 1024, 0, &Device::flex());
        let t = best(|| fresh(&m), |g| sync(&state.step_local(g).unwrap()), 5);
        let bits = 32.0 * (rank * 2048) as f64 / (1024.0 * 1024.0);
        println!(
            "  powersgd 1024², rank {rank}: {:>8.2} ms ({:.1} memcpys of 1024², {bits:.3} bits/entry)",
            t * 1e3,
            t / (memcpy / 4.0)
        );
    }
}
