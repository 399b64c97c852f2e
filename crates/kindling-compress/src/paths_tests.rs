//! The host and device paths of every codec write the same format: each decodes the other's
//! payloads to the same values, and where both compute the same f32 arithmetic from the same
//! uniforms they write the same bytes. Run on the test device (Flex, or wgpu in CI); on Flex the
//! device path is forced with [`DEVICE_PATH_ONLY`].

use burn::tensor::{Device, Tensor, TensorData};
use kindling_testing::device;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use crate::host::DEVICE_PATH_ONLY;
use crate::*;

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0.0f32, 1.0).unwrap();
    (0..n)
        .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
        .collect()
}

fn on_device_path<T>(f: impl FnOnce() -> T) -> T {
    DEVICE_PATH_ONLY.set(true);
    let out = f();
    DEVICE_PATH_ONLY.set(false);
    out
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * scale,
            "{what}: entry {i}: {x} vs {y}"
        );
    }
}

/// Encodes `g` on both paths with the same seed; decodes each payload on both paths.
fn check<C: Compressor + Clone>(name: &str, codec: C, shape: [usize; 2], same_bytes: bool) {
    let dev = device();
    let flex = Device::flex();
    let g = gaussian(shape[0] * shape[1], 11);
    let on = |d: &Device| Tensor::<2>::from_data(TensorData::new(g.clone(), shape), d);
    let host = codec
        .clone()
        .compress(on(&flex), &mut ChaCha8Rng::seed_from_u64(5))
        .unwrap();
    let device_payload = on_device_path(|| {
        codec
            .clone()
            .compress(on(&dev), &mut ChaCha8Rng::seed_from_u64(5))
            .unwrap()
    });
    if same_bytes {
        assert_eq!(host.as_bytes(), device_payload.as_bytes(), "{name}: bytes");
    }
    assert_eq!(host.wire_bytes() > 0, device_payload.wire_bytes() > 0);
    for (which, payload) in [("host", &host), ("device", &device_payload)] {
        let mut on_host = vec![f32::NAN; g.len()];
        codec.decode_into(&payload.borrow(), &mut on_host).unwrap();
        let from_device = on_device_path(|| values(codec.decompress(payload, &dev).unwrap()));
        close(&on_host, &from_device, &format!("{name}: {which} payload"));
        // decode_add accumulates: twice half the payload is the payload.
        let mut sum = vec![0.0f32; g.len()];
        codec.decode_add(&payload.borrow(), 0.5, &mut sum).unwrap();
        codec.decode_add(&payload.borrow(), 0.5, &mut sum).unwrap();
        close(&sum, &on_host, &format!("{name}: {which} decode_add"));
    }
    covers(name, codec, [331, 373]);
}

/// The host decoder writes every entry, across several tasks and a partial last one:
/// `decode_into` leaves no entry of a NaN-filled buffer, and `decode_to_vec` (which writes into
/// fresh memory, with no zero fill) gives the same bits.
fn covers<C: Compressor + Clone>(name: &str, codec: C, shape: [usize; 2]) {
    assert!(shape[0] * shape[1] > 2 * crate::host::CHUNK);
    let g = gaussian(shape[0] * shape[1], 12);
    let flex = Device::flex();
    let payload = codec
        .clone()
        .compress(
            Tensor::<2>::from_data(TensorData::new(g.clone(), shape), &flex),
            &mut ChaCha8Rng::seed_from_u64(6),
        )
        .unwrap();
    let mut into = vec![f32::NAN; g.len()];
    codec.decode_into(&payload.borrow(), &mut into).unwrap();
    assert!(
        into.iter().all(|v| v.is_finite()),
        "{name}: decode_into left an entry unwritten"
    );
    let fresh = codec.decode_to_vec(&payload.borrow()).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&fresh), bits(&into), "{name}: decode_to_vec");
}

#[test]
fn every_codec_decodes_the_other_paths_payloads() {
    let shape = [37, 41]; // odd sizes: partial bytes, words, base-3 groups and buckets
    check("identity", Identity, shape, true);
    check("half", Half::new(HalfFormat::F16), shape, true);
    check("bf16", Half::new(HalfFormat::Bf16), shape, true);
    check("sign", Sign, shape, true);
    check("scaled sign", ScaledSign, shape, false);
    check("qsgd s=1", Qsgd::new(1).unwrap(), shape, false);
    check(
        "qsgd s=16 b=50",
        Qsgd::new(16).unwrap().with_bucket(50).unwrap(),
        shape,
        false,
    );
    check(
        "qsgd s=5 elias",
        Qsgd::new(5).unwrap().with_coding(LevelCoding::EliasGamma),
        shape,
        false,
    );
    check("terngrad", TernGrad::new(), shape, true);
    check(
        "terngrad base3",
        TernGrad::new().with_packing(TritPacking::Base3),
        shape,
        true,
    );
    check(
        "terngrad clipped",
        TernGrad::new().with_clipping(2.5).unwrap(),
        shape,
        false,
    );
    check(
        "top-k",
        TopK::new(Count::Fraction(0.05)).unwrap(),
        shape,
        true,
    );
    check(
        "random-k",
        RandomK::new(Count::Entries(40)).unwrap(),
        shape,
        true,
    );
    check(
        "atomo entry-wise",
        Atomo::new(EntryWise, Budget::QsgdEquivalent).unwrap(),
        shape,
        false,
    );
    check(
        "atomo spectral",
        Atomo::new(Spectral::full(), Budget::Atoms(6.0)).unwrap(),
        shape,
        false,
    );
    check(
        "atomo fourier",
        Atomo::new(Fourier, Budget::Fraction(0.1)).unwrap(),
        shape,
        false,
    );
    check(
        "error feedback",
        ErrorFeedback::new(TopK::new(Count::Fraction(0.05)).unwrap()),
        shape,
        true,
    );
}

/// Tensors of several chunks: chunk boundaries inside buckets, Elias runs across chunks.
#[test]
fn multi_chunk_tensors_decode_the_same_on_both_paths() {
    let shape = [301, 701];
    check("sign", Sign, shape, true);
    check("qsgd s=1", Qsgd::new(1).unwrap(), shape, false);
    check(
        "qsgd s=16 b=1000",
        Qsgd::new(16).unwrap().with_bucket(1000).unwrap(),
        shape,
        false,
    );
    check(
        "qsgd s=2 b=512 elias",
        Qsgd::new(2)
            .unwrap()
            .with_bucket(512)
            .unwrap()
            .with_coding(LevelCoding::EliasGamma),
        shape,
        false,
    );
    check(
        "terngrad base3",
        TernGrad::new().with_packing(TritPacking::Base3),
        shape,
        true,
    );
    check(
        "top-k",
        TopK::new(Count::Fraction(0.01)).unwrap(),
        shape,
        true,
    );
    // 211 001 entries, padded to 2¹⁸: the host transform's four-step path.
    check(
        "atomo fourier",
        Atomo::new(Fourier, Budget::Fraction(0.05)).unwrap(),
        shape,
        false,
    );
}

/// `compress` on the host path, then on the device path, is [`CompressError::Overflow`].
fn refuses_with_overflow(compress: impl Fn() -> Result<Payload, CompressError>) {
    for device_path in [false, true] {
        DEVICE_PATH_ONLY.set(device_path);
        let result = compress();
        DEVICE_PATH_ONLY.set(false);
        assert!(
            matches!(result, Err(CompressError::Overflow)),
            "device path {device_path}: {result:?}"
        );
    }
}

/// Fourier ATOMO refuses a gradient whose transform would overflow f32, on both paths, with
/// the codec's typed error rather than infinite coefficients.
#[test]
fn fourier_refuses_a_gradient_whose_transform_overflows() {
    let g = vec![f32::MAX / 3.0; 4];
    refuses_with_overflow(|| {
        let t = Tensor::<1>::from_data(TensorData::new(g.clone(), [4]), &device());
        Atomo::new(Fourier, Budget::Atoms(2.0))
            .unwrap()
            .compress(t, &mut ChaCha8Rng::seed_from_u64(1))
    });
}

/// Full-SVD spectral ATOMO with a budget of `atoms` on the `side × side` gradient `g`, on the
/// test device.
fn spectral(g: &[f32], side: usize, atoms: f64) -> Result<Payload, CompressError> {
    let t = Tensor::<2>::from_data(TensorData::new(g.to_vec(), [side, side]), &device());
    Atomo::new(Spectral::full(), Budget::Atoms(atoms))
        .unwrap()
        .compress(t, &mut ChaCha8Rng::seed_from_u64(1))
}

/// Spectral ATOMO refuses a gradient of finite entries whose singular values (or an atom's
/// scale) overflow f32, on both paths, with the codec's typed error: before, an infinite σ made
/// the probabilities NaN and the payload silently carried no atom (a zero gradient).
#[test]
fn spectral_refuses_a_gradient_whose_singular_values_overflow() {
    let g = vec![f32::MAX / 1.5; 4];
    refuses_with_overflow(|| spectral(&g, 2, 1.0));
}

/// Spectral ATOMO refuses an atom whose scale `σ/p` overflows f32 though σ is finite: six
/// singular values of f32::MAX/2, each kept with p = 1/3 by a budget of 2 atoms, would be sent
/// as 1.5·f32::MAX (infinite in f32), on both paths.
#[test]
fn spectral_refuses_an_atom_whose_scale_overflows() {
    let g: Vec<f32> = (0..36)
        .map(|i| if i % 7 == 0 { f32::MAX / 2.0 } else { 0.0 })
        .collect();
    refuses_with_overflow(|| spectral(&g, 6, 2.0));
}

/// Payload bytes do not depend on how many threads encode them.
#[test]
fn payloads_are_the_same_for_any_thread_count() {
    let g = gaussian(300_000, 3);
    let encode = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let t = Tensor::<1>::from_data(TensorData::new(g.clone(), [g.len()]), &Device::flex());
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            [
                Qsgd::new(16)
                    .unwrap()
                    .with_bucket(512)
                    .unwrap()
                    .compress(t.clone(), &mut rng),
                Qsgd::new(1).unwrap().compress(t.clone(), &mut rng),
                TernGrad::new().compress(t.clone(), &mut rng),
                Atomo::new(EntryWise, Budget::QsgdEquivalent)
                    .unwrap()
                    .compress(t.clone(), &mut rng),
                TopK::new(Count::Fraction(0.01))
                    .unwrap()
                    .compress(t.clone(), &mut rng),
                Atomo::new(Fourier, Budget::Fraction(0.01))
                    .unwrap()
                    .compress(t, &mut rng),
            ]
            .map(|p| p.unwrap())
        })
    };
    let (one, three) = (encode(1), encode(3));
    // Fourier's inverse transform splits its work the same way: its decode too.
    let decode = |threads: usize, payload: &Payload| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let codec = Atomo::new(Fourier, Budget::Fraction(0.01)).unwrap();
            let t: Tensor<1> = codec.decompress(payload, &Device::flex()).unwrap();
            values(t.reshape([1, g.len()]))
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(decode(1, &one[5]), decode(3, &one[5]));
    assert_eq!(one.map(Payload::into_bytes), three.map(Payload::into_bytes));
}

/// Every vector level the CPU has ([`crate::simd`]) writes the same payload bytes and decodes to
/// the same bits: no kernel's result depends on the lanes it ran on.
#[test]
fn payloads_and_decodes_are_the_same_at_every_vector_level() {
    use crate::simd::{Level, capped};
    let g = gaussian(200_000, 5);
    let m = gaussian(300 * 200, 6);
    let run = |level: Level| {
        capped(level, || {
            let device = Device::flex();
            let t = Tensor::<2>::from_data(TensorData::new(g.clone(), [400, 500]), &device);
            let mt = Tensor::<2>::from_data(TensorData::new(m.clone(), [300, 200]), &device);
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let mut out = Vec::new();
            let mut check = |payload: Result<Payload, CompressError>,
                             decode: &dyn Fn(&Payload) -> Tensor<2>| {
                let payload = payload.unwrap();
                let decoded = values(decode(&payload));
                out.push((
                    payload.into_bytes(),
                    decoded.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                ));
            };
            macro_rules! codec {
                ($codec:expr, $grad:expr) => {{
                    let mut codec = $codec;
                    let payload = codec.compress($grad.clone(), &mut rng);
                    check(payload, &|p| codec.decompress(p, &device).unwrap());
                }};
            }
            codec!(Qsgd::new(16).unwrap().with_bucket(512).unwrap(), t);
            codec!(
                Qsgd::new(16)
                    .unwrap()
                    .with_bucket(512)
                    .unwrap()
                    .with_coding(LevelCoding::Fixed),
                t
            );
            codec!(Qsgd::new(1).unwrap(), t);
            codec!(TernGrad::new(), t);
            codec!(TernGrad::new().with_packing(TritPacking::Base3), t);
            codec!(Sign, t);
            codec!(ScaledSign, t);
            codec!(TopK::new(Count::Fraction(0.01)).unwrap(), t);
            codec!(RandomK::new(Count::Fraction(0.01)).unwrap(), t);
            codec!(Atomo::new(EntryWise, Budget::QsgdEquivalent).unwrap(), t);
            codec!(Atomo::new(Fourier, Budget::Fraction(0.01)).unwrap(), t);
            codec!(
                Atomo::new(Spectral::full(), Budget::Atoms(4.0)).unwrap(),
                mt
            );
            codec!(
                Atomo::new(Spectral::truncated(8, 2).unwrap(), Budget::Atoms(4.0)).unwrap(),
                mt
            );
            out
        })
    };
    let baseline = run(Level::Baseline);
    for level in [Level::Avx2, Level::Avx512] {
        let wide = run(level);
        for (i, (a, b)) in baseline.iter().zip(&wide).enumerate() {
            assert!(a.0 == b.0, "codec {i}: payload differs at {level:?}");
            assert!(a.1 == b.1, "codec {i}: decode differs at {level:?}");
        }
    }
}

/// PowerSGD's host kernels and its tensor path agree step by step (`P`, `Q`, the output and the
/// residual), and the host kernels give the same bits for any thread count and vector level.
#[test]
fn powersgd_paths_agree_and_host_bits_are_fixed() {
    use crate::powersgd::{PowerSgd, PowerSgdConfig};
    use crate::simd::{Level, capped};
    // Two row tasks, four column tasks (the last one partial), and dot products with a tail.
    let (rows, cols) = (70, 1000);
    let config = PowerSgdConfig::new(3).unwrap().with_seed(4);
    let grads: Vec<Vec<f32>> = (0..3).map(|s| gaussian(rows * cols, 20 + s)).collect();
    let run = |device: &Device| {
        let mut state = PowerSgd::new(&config, rows, cols, 1, device);
        grads
            .iter()
            .map(|g| {
                let t = Tensor::<2>::from_data(TensorData::new(g.clone(), [rows, cols]), device);
                let started = state.start(t).unwrap();
                let p = started.p().to_vec();
                let projected = state.project(started, &p).unwrap();
                let q = projected.q().to_vec();
                let out = values(state.finish(projected, &q).unwrap());
                [p, q, out, state.error()]
            })
            .collect::<Vec<_>>()
    };
    let host = run(&Device::flex());
    let on_device = on_device_path(|| run(&device()));
    for (step, (h, d)) in host.iter().zip(&on_device).enumerate() {
        for (what, a, b) in ["P", "Q", "output", "residual"]
            .iter()
            .zip(h)
            .zip(d)
            .map(|((w, a), b)| (w, a, b))
        {
            close(a, b, &format!("PowerSGD step {step}: {what}"));
        }
    }
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| run(&Device::flex()));
    assert!(one_thread == host, "PowerSGD differs on one thread");
    for level in [Level::Baseline, Level::Avx2] {
        assert!(
            capped(level, || run(&Device::flex())) == host,
            "PowerSGD differs at {level:?}"
        );
    }
}

/// The majority vote's host kernel (a bit-sliced count over the packed signs) gives the vote
/// computed entry by entry, and the device path's, for 1 to 9 voters with an abstainer among
/// them, over several tasks and a partial last word.
#[test]
fn majority_vote_counts_on_both_paths() {
    let n = 2 * crate::host::CHUNK + 77;
    for voters in 1..=9usize {
        let grads: Vec<Vec<f32>> = (0..voters)
            .map(|m| {
                if m == 1 {
                    vec![0.0; n]
                } else {
                    gaussian(n, 100 + m as u64)
                }
            })
            .collect();
        let payloads: Vec<Payload> = grads
            .iter()
            .map(|g| {
                let t = Tensor::<1>::from_data(TensorData::new(g.clone(), [n]), &Device::flex());
                Sign.compress(t, &mut ChaCha8Rng::seed_from_u64(0)).unwrap()
            })
            .collect();
        let voting: Vec<&Vec<f32>> = grads
            .iter()
            .filter(|g| g.iter().any(|v| *v != 0.0))
            .collect();
        let expected: Vec<f32> = (0..n)
            .map(|i| {
                let sum: i32 = voting.iter().map(|g| if g[i] < 0.0 { -1 } else { 1 }).sum();
                if sum >= 0 { 1.0 } else { -1.0 }
            })
            .collect();
        let flat = |t: Tensor<1>| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let host = flat(majority_vote::<1>(&payloads, &Device::flex()).unwrap());
        assert!(host == expected, "{voters} voters: host kernel");
        let on_device = on_device_path(|| flat(majority_vote::<1>(&payloads, &device()).unwrap()));
        assert!(on_device == expected, "{voters} voters: device path");
    }
}
