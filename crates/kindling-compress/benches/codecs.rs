//! Codec speed on a 4 M-entry f32 gradient (2048 × 2048), on Flex, in one run: encode, decode
//! and encode+decode of every codec, against the time of one elementwise pass over the same
//! tensor (`g * c`) as the unit; plus spectral ATOMO on 512² and 1024² (full and rank-8) and
//! PowerSGD ranks 1–4 on 1024².
//!
//! `cargo bench -p kindling-compress` prints divan's table, then a summary table (median of a few
//! runs each) with every codec's time in passes and its bits per entry.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use kindling_compress::powersgd::{PowerSgd, PowerSgdConfig};
use kindling_compress::*;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

const SIDE: usize = 2048;

fn gradient(rows: usize, cols: usize) -> Tensor<2> {
    let device = Device::flex();
    device.seed(1);
    Tensor::random([rows, cols], Distribution::Normal(0.0, 1.0), &device)
}

fn sync(t: &Tensor<2>) {
    t.device().sync().expect("sync");
}

type RoundTrip = Box<dyn FnMut(&Tensor<2>, &mut ChaCha8Rng) -> (Payload, Tensor<2>)>;
type Encode = Box<dyn FnMut(&Tensor<2>, &mut ChaCha8Rng) -> Payload>;

/// A codec under test, type-erased for the tables.
struct Case {
    name: &'static str,
    run: RoundTrip,
    encode: Encode,
}

fn case<C: Compressor + Clone + 'static>(name: &'static str, codec: C) -> Case {
    let mut a = codec.clone();
    let mut b = codec;
    Case {
        name,
        run: Box::new(move |g, r| {
            let p = a.compress(g.clone(), r).expect("encode");
            let out: Tensor<2> = a.decompress(&p, &g.device()).expect("decode");
            (p, out)
        }),
        encode: Box::new(move |g, r| b.compress(g.clone(), r).expect("encode")),
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("identity", Identity),
        case("half (f16)", Half::new(HalfFormat::F16)),
        case("sign", Sign),
        case("scaled sign", ScaledSign),
        case("qsgd s=1", Qsgd::new(1).unwrap()),
        case(
            "qsgd s=16 b=512",
            Qsgd::new(16).unwrap().with_bucket(512).unwrap(),
        ),
        case("terngrad", TernGrad::new()),
        case(
            "terngrad base3",
            TernGrad::new().with_packing(TritPacking::Base3),
        ),
        case("top-k 1%", TopK::new(Count::Fraction(0.01)).unwrap()),
        case("random-k 1%", RandomK::new(Count::Fraction(0.01)).unwrap()),
        case(
            "atomo entry (qsgd budget)",
            Atomo::new(EntryWise, Budget::QsgdEquivalent).unwrap(),
        ),
        case(
            "atomo fourier 1%",
            Atomo::new(Fourier, Budget::Fraction(0.01)).unwrap(),
        ),
        case(
            "error feedback(top-k 1%)",
            ErrorFeedback::new(TopK::new(Count::Fraction(0.01)).unwrap()),
        ),
    ]
}

#[divan::bench(sample_count = 5)]
fn elementwise_pass(bencher: divan::Bencher) {
    let g = gradient(SIDE, SIDE);
    bencher.bench_local(|| sync(&(g.clone() * 1.5)));
}

#[divan::bench(args = ["sign", "qsgd s=1", "terngrad", "atomo entry (qsgd budget)"], sample_count = 5)]
fn encode_decode(bencher: divan::Bencher, name: &str) {
    let g = gradient(SIDE, SIDE);
    let mut c = cases().into_iter().find(|c| c.name == name).expect("case");
    let mut r = ChaCha8Rng::seed_from_u64(0);
    bencher.bench_local(|| sync(&(c.run)(&g, &mut r).1));
}

fn median(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    divan::main();
    let g = gradient(SIDE, SIDE);
    let n = (SIDE * SIDE) as f64;
    let pass = median(|| sync(&(g.clone() * 1.5)), 9);
    println!(
        "\n4 M-entry gradient ({SIDE}×{SIDE}, Flex); unit = one pass g*c = {:.2} ms",
        pass * 1e3
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "codec", "enc ms", "dec ms", "both ms", "enc", "dec", "both", "bits/entry"
    );
    for mut c in cases() {
        let mut r = ChaCha8Rng::seed_from_u64(0);
        let payload = (c.encode)(&g, &mut r);
        let bits = 8.0 * payload.wire_bytes() as f64 / n;
        let enc = median(|| drop((c.encode)(&g, &mut r)), 5);
        let both = median(|| sync(&(c.run)(&g, &mut r).1), 5);
        let dec = (both - enc).max(0.0);
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>8.1} {:>8.1} {:>10.3}",
            c.name,
            enc * 1e3,
            dec * 1e3,
            both * 1e3,
            enc / pass,
            dec / pass,
            both / pass,
            bits
        );
    }
    println!("\nspectral ATOMO (budget 4 atoms) and PowerSGD, encode+decode:");
    for side in [512, 1024] {
        let m = gradient(side, side);
        for (label, atoms) in [
            ("full SVD", Spectral::full()),
            ("rank-8 randomized", Spectral::truncated(8, 2).unwrap()),
        ] {
            let mut c = case("spectral", Atomo::new(atoms, Budget::Atoms(4.0)).unwrap());
            let mut r = ChaCha8Rng::seed_from_u64(0);
            let t = median(|| sync(&(c.run)(&m, &mut r).1), 3);
            println!("  atomo spectral {side}², {label:<18} {:>10.1} ms", t * 1e3);
        }
    }
    let m = gradient(1024, 1024);
    for rank in 1..=4 {
        let config = PowerSgdConfig::new(rank).unwrap();
        let mut state = PowerSgd::new(&config, 1024, 1024, 0, &m.device());
        let t = median(|| sync(&state.step_local(m.clone())), 5);
        let bits = 32.0 * (rank * 2048) as f64 / (1024.0 * 1024.0);
        println!(
            "  powersgd 1024², rank {rank}: {:>8.2} ms ({:.1} passes of 1024², {bits:.3} bits/entry)",
            t * 1e3,
            t / (pass / 4.0)
        );
    }
}
