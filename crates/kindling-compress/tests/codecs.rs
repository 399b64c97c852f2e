//! The contract every codec meets, the spec's reference values, and the statistical properties
//! of the unbiased codecs (`../shared/specs/compression.md`). Every test runs on the
//! `kindling-testing` device.

use burn::tensor::{Device, Tensor, TensorData};
use kindling_compress::atomo::probabilities;
use kindling_compress::powersgd::{PowerSgd, PowerSgdConfig, compression_rate, orthonormalize};
use kindling_compress::*;
use kindling_testing::stats::{VectorMean, assert_relative_close};
use kindling_testing::{assert_slices_close, device, to_vec};
use rand::rngs::ChaCha8Rng;
use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let normal = Normal::new(0.0_f32, 1.0).unwrap();
    (0..n).map(|_| normal.sample(&mut r)).collect()
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn norm2(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum()
}

/// Encodes and decodes one draw of a flat vector, through the bytes.
fn round_trip<C: Compressor>(codec: &mut C, v: &[f32], r: &mut dyn Rng) -> (Vec<f32>, usize) {
    let device = device();
    let payload = codec
        .compress(tensor(v.to_vec(), [v.len()], &device), r)
        .unwrap();
    let wire = payload.wire_bytes();
    let received = Payload::from_bytes(payload.into_bytes()).unwrap();
    let out: Tensor<1> = codec.decompress(&received, &device).unwrap();
    (to_vec(&out), wire)
}

/// Mean of `draws` decodings, and the mean squared error `E‖ĝ − g‖²`.
fn monte_carlo<C: Compressor>(
    codec: &mut C,
    g: &[f32],
    draws: usize,
    seed: u64,
) -> (VectorMean, f64) {
    let mut r = rng(seed);
    let mut mean = VectorMean::new(g.len());
    let mut mse = 0.0;
    for _ in 0..draws {
        let (out, _) = round_trip(codec, g, &mut r);
        mse += out
            .iter()
            .zip(g)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
        mean.push(&out);
    }
    (mean, mse / draws as f64)
}

// ---------------------------------------------------------------------------------------------
// QSGD

/// Spec reference: one 64-entry standard Gaussian vector, many draws: E‖Q−v‖²/‖v‖² ≈ 5.4 at
/// s = 1 (bound min(n/s², √n/s) = 8) and ≈ 0.039 at s = 16 (bound 0.25). The exact variance of
/// QSGD is Σ_i (‖v‖/s)²·f_i(1 − f_i) with f_i the fractional part of s|v_i|/‖v‖; Monte Carlo
/// (4000 draws, about 1.5% standard error) must match it within 5%, stay under the bound, and
/// land near the spec's values, which were measured on another Gaussian vector (within 20%).
#[test]
fn qsgd_variance_reference_values() {
    let v = gaussian(64, 1);
    let norm = norm2(&v).sqrt();
    for (s, reference, bound) in [(1u32, 5.4, 8.0), (16, 0.039, 0.25)] {
        let exact: f64 = v
            .iter()
            .map(|&x| {
                let r = s as f64 * (x.abs() as f64) / norm;
                let f = r - r.floor();
                (norm / s as f64).powi(2) * f * (1.0 - f)
            })
            .sum::<f64>()
            / norm2(&v);
        let (_, mse) = monte_carlo(&mut Qsgd::new(s).unwrap(), &v, 4000, 2);
        let ratio = mse / norm2(&v);
        eprintln!("QSGD s = {s}: E‖Q−v‖²/‖v‖² = {ratio:.4} (exact {exact:.4}, spec ≈ {reference})");
        assert!(
            ratio <= bound,
            "s = {s}: ratio {ratio} above the bound {bound}"
        );
        assert_relative_close(
            &format!("QSGD s = {s} vs exact variance"),
            ratio,
            exact,
            0.05,
        );
        assert_relative_close(
            &format!("QSGD s = {s} vs the spec's value"),
            ratio,
            reference,
            0.20,
        );
    }
}

/// Unbiasedness with the tolerance from the variance bound: ‖mean − v‖² ≤ 9·V/N with
/// V = min(n/s², √n/s)·‖v‖² (an upper bound on the true variance, so the test is conservative).
#[test]
fn qsgd_is_unbiased_with_and_without_buckets() {
    let v = gaussian(200, 3);
    for codec in [
        Qsgd::new(2).unwrap(),
        Qsgd::new(5).unwrap().with_bucket(64).unwrap(),
        Qsgd::new(1).unwrap().with_coding(LevelCoding::EliasGamma),
    ] {
        let mut c = codec;
        let (mean, _) = monte_carlo(&mut c, &v, 2000, 4);
        let s = c.levels() as f64;
        let n = v.len() as f64;
        let bound = (n / (s * s)).min(n.sqrt() / s) * norm2(&v);
        mean.assert_unbiased("QSGD", &v, bound, 9.0);
    }
}

/// The published bug: rounding up with probability 1 − frac instead of frac. Implemented here
/// on the host exactly as the buggy code does; the same unbiasedness check that QSGD passes
/// must reject it (its relative bias at s = 1 is about 6.5).
#[test]
fn qsgd_with_the_published_rounding_bug_fails_the_unbiasedness_test() {
    let v = gaussian(64, 1);
    let norm = norm2(&v).sqrt() as f32;
    let s = 1.0_f32;
    let mut r = rng(5);
    let draws = 2000;
    let mut mean = VectorMean::new(v.len());
    for _ in 0..draws {
        let q: Vec<f32> = v
            .iter()
            .map(|&x| {
                let scaled = s * x.abs() / norm;
                let l = scaled.floor();
                let frac = scaled - l;
                let up = r.random::<f32>() < 1.0 - frac; // the bug
                norm * x.signum() * (l + up as u32 as f32) / s
            })
            .collect();
        mean.push(&q);
    }
    let bias: Vec<f32> = mean
        .mean()
        .iter()
        .zip(&v)
        .map(|(m, x)| (*m as f32) - x)
        .collect();
    let relative_bias = (norm2(&bias) / norm2(&v)).sqrt();
    assert!(relative_bias > 5.0, "relative bias {relative_bias}");
    let bound = 8.0 * norm2(&v);
    let caught = std::panic::catch_unwind(|| mean.assert_unbiased("buggy QSGD", &v, bound, 9.0));
    assert!(
        caught.is_err(),
        "the unbiasedness test must reject the buggy rounding"
    );
}

/// Elias-gamma and fixed-width coding: the header flags the smaller, and its size is exactly
/// the closed form (fixed: 1 + ⌈log₂(s+1)⌉ bits per entry; Elias: Σ (2⌊log₂(l+1)⌋ + 1 + [l>0])).
#[test]
fn qsgd_picks_the_smaller_level_coding() {
    let device = device();
    let v = gaussian(1000, 6);
    let g = tensor(v.clone(), [1000], &device);
    for s in [1u32, 3, 31, 255] {
        let mut r = rng(7);
        let auto = Qsgd::new(s).unwrap().compress(g.clone(), &mut r).unwrap();
        let mut r = rng(7);
        let fixed = Qsgd::new(s)
            .unwrap()
            .with_coding(LevelCoding::Fixed)
            .compress(g.clone(), &mut r)
            .unwrap();
        let mut r = rng(7);
        let elias = Qsgd::new(s)
            .unwrap()
            .with_coding(LevelCoding::EliasGamma)
            .compress(g.clone(), &mut r)
            .unwrap();
        assert_eq!(
            fixed.wire_bytes(),
            Qsgd::new(s).unwrap().fixed_wire_bytes(&[1000])
        );
        assert_eq!(
            auto.wire_bytes(),
            fixed.wire_bytes().min(elias.wire_bytes()),
            "s = {s}"
        );
        // All three decode to the same vector (same seed, same levels).
        let q = Qsgd::new(s).unwrap();
        let a: Tensor<1> = q.decompress(&auto, &device).unwrap();
        let f: Tensor<1> = q.decompress(&fixed, &device).unwrap();
        let e: Tensor<1> = q.decompress(&elias, &device).unwrap();
        assert_eq!(to_vec(&a), to_vec(&f));
        assert_eq!(to_vec(&e), to_vec(&f));
        // Elias size closed form from the decoded levels.
        let norm = norm2(&v).sqrt() as f32;
        let levels: Vec<u32> = to_vec(&f)
            .iter()
            .map(|x| (x.abs() * s as f32 / norm).round() as u32)
            .collect();
        let header = Header::len_for_rank(1);
        let elias_bits = elias_gamma_bits(&levels);
        assert_eq!(
            elias.wire_bytes(),
            header + 8 + 4 + 8 + elias_bits.div_ceil(8) as usize
        );
    }
}

// ---------------------------------------------------------------------------------------------
// TernGrad

/// E‖t − g‖² = Σ|g_i|(s − |g_i|): Monte Carlo within 0.1% of the closed form (400 draws of a
/// 100 000-entry vector: per draw the squared error has a relative spread of about 0.6%, so the
/// mean's standard error is about 0.03%).
#[test]
fn terngrad_variance_matches_the_closed_form() {
    let v = gaussian(100_000, 8);
    let s = v.iter().fold(0.0_f32, |m, x| m.max(x.abs())) as f64;
    let closed: f64 = v
        .iter()
        .map(|&x| (x.abs() as f64) * (s - x.abs() as f64))
        .sum();
    let (_, mse) = monte_carlo(&mut TernGrad::new(), &v, 400, 9);
    assert_relative_close("TernGrad variance", mse, closed, 1e-3);
}

#[test]
fn terngrad_is_unbiased_in_both_packings() {
    let v = gaussian(300, 10);
    let s = v.iter().fold(0.0_f32, |m, x| m.max(x.abs())) as f64;
    let variance: f64 = v
        .iter()
        .map(|&x| (x.abs() as f64) * (s - x.abs() as f64))
        .sum();
    for packing in [TritPacking::TwoBits, TritPacking::Base3] {
        let mut codec = TernGrad::new().with_packing(packing);
        let (mean, _) = monte_carlo(&mut codec, &v, 2000, 11);
        mean.assert_unbiased("TernGrad", &v, variance, 9.0);
    }
}

/// A 2-bit field of 3 and a base-3 byte above 242 are not ternaries: the decoder refuses them
/// wherever they sit in a payload of several chunks, and names the first bad base-3 byte.
#[test]
fn terngrad_refuses_fields_that_are_not_ternaries() {
    let device = device();
    let g = tensor(gaussian(150_000, 12), [150_000], &device);
    let decode = |codec: &TernGrad, bytes: Vec<u8>| {
        codec.decompress::<1>(&Payload::from_bytes(bytes).unwrap(), &device)
    };
    let two_bit = TernGrad::new();
    let mut bytes = two_bit
        .clone()
        .compress(g.clone(), &mut rng(1))
        .unwrap()
        .into_bytes();
    let last = bytes.len() - 1;
    bytes[last - 20] = 0b1100_0000; // entry 4 of its byte: both bits set
    assert!(matches!(
        decode(&two_bit, bytes),
        Err(DecodeError::FieldOutOfRange {
            field: "ternary",
            value: 3,
            ..
        })
    ));
    let base3 = TernGrad::new().with_packing(TritPacking::Base3);
    let mut bytes = base3.clone().compress(g, &mut rng(1)).unwrap().into_bytes();
    let last = bytes.len() - 1;
    // Two in one chunk of the check, one in a later chunk: the first is named.
    (bytes[last - 20_010], bytes[last - 20_000], bytes[last]) = (251, 252, 250);
    assert!(matches!(
        decode(&base3, bytes),
        Err(DecodeError::FieldOutOfRange {
            field: "base-3 byte",
            value: 251,
            ..
        })
    ));
}

#[test]
fn terngrad_shared_scale_and_clipping() {
    let device = device();
    let g = tensor(vec![0.5, -1.0, 0.25, 10.0], [4], &device);
    let codec = TernGrad::new();
    assert_eq!(codec.local_scale(g.clone()).unwrap(), 10.0);
    let p = codec
        .compress_with_scale(g.clone(), 20.0, &mut rng(1))
        .unwrap();
    let out: Tensor<1> = codec.decompress(&p, &device).unwrap();
    assert!(to_vec(&out).iter().all(|&x| x == 0.0 || x.abs() == 20.0));
    let err = codec
        .compress_with_scale(g.clone(), 5.0, &mut rng(1))
        .unwrap_err();
    assert!(matches!(
        err,
        CompressError::InvalidParameter { field: "scale", .. }
    ));
    // Clipping at c·σ: σ of [0.5, −1, 0.25, 10] is 4.4030 (population), so 1·σ clips 10.
    let clipped = TernGrad::new().with_clipping(1.0).unwrap();
    let scale = clipped.local_scale(g).unwrap();
    assert!((scale - 4.4030).abs() < 1e-3, "{scale}");
    assert!(!clipped.is_unbiased());
}

// ---------------------------------------------------------------------------------------------
// Sign, scaled sign, majority vote

/// ‖C(x) − x‖² = ‖x‖² − ‖x‖₁²/n for the scaled sign, exactly (up to float rounding).
#[test]
fn scaled_sign_identity() {
    let v = gaussian(257, 12);
    let (out, wire) = round_trip(&mut ScaledSign, &v, &mut rng(0));
    let err: f64 = out
        .iter()
        .zip(&v)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let l1: f64 = v.iter().map(|x| x.abs() as f64).sum();
    let expected = norm2(&v) - l1 * l1 / v.len() as f64;
    assert_relative_close("scaled-sign identity", err, expected, 1e-5);
    assert_eq!(wire, Header::len_for_rank(1) + 4 + 257usize.div_ceil(8));
}

#[test]
fn sign_decodes_to_plus_minus_one_with_ties_positive() {
    let v = vec![0.5, -2.0, 0.0, -0.0, 3.0, -1e-30];
    let (out, wire) = round_trip(&mut Sign, &v, &mut rng(0));
    assert_eq!(out, vec![1.0, -1.0, 1.0, 1.0, 1.0, -1.0]);
    assert_eq!(wire, Header::len_for_rank(1) + 1);
}

/// M = 7 workers, 3 adversaries sending −sign(g): the vote equals the honest sign wherever the
/// honest workers agree (and ties go to +1).
#[test]
fn majority_vote_survives_a_minority_of_flipped_signs() {
    let device = device();
    let honest = gaussian(512, 13);
    let mut payloads = Vec::new();
    for worker in 0..7 {
        // Honest workers see the same gradient plus small noise that never flips a sign here;
        // adversaries flip it.
        let noisy: Vec<f32> = honest
            .iter()
            .zip(gaussian(512, 100 + worker))
            .map(|(h, e)| h + 0.01 * e * h.abs())
            .collect();
        let sent: Vec<f32> = if worker < 3 {
            noisy.iter().map(|x| -x).collect()
        } else {
            noisy
        };
        payloads.push(
            Sign.compress(tensor(sent, [512], &device), &mut rng(0))
                .unwrap(),
        );
    }
    let vote: Tensor<1> = majority_vote(&payloads, &device).unwrap();
    let expected: Vec<f32> = honest
        .iter()
        .map(|&x| if x < 0.0 { -1.0 } else { 1.0 })
        .collect();
    assert_eq!(to_vec(&vote), expected);
    // A tie (one +, one −) resolves to +1.
    let tie = [
        Sign.compress(tensor(vec![1.0], [1], &device), &mut rng(0))
            .unwrap(),
        Sign.compress(tensor(vec![-1.0], [1], &device), &mut rng(0))
            .unwrap(),
    ];
    assert_eq!(
        to_vec(&majority_vote::<1>(&tie, &device).unwrap()),
        vec![1.0]
    );
}

/// The vote refuses what it cannot count, on both entry points: no payloads, another codec's
/// payload, undefined sign flags, payloads of different shapes, a buffer of the wrong size.
#[test]
fn majority_vote_refuses_what_it_cannot_count() {
    let device = device();
    let sign = |v: Vec<f32>| {
        let n = v.len();
        Sign.compress(tensor(v, [n], &device), &mut rng(0)).unwrap()
    };
    let a = sign(vec![1.0, -2.0, 3.0]);
    assert!(majority_vote::<1>(&[], &device).is_err());
    assert!(majority_vote_into(&[], &mut [0.0; 3]).is_err());
    let other = Identity
        .compress(tensor(vec![1.0, 2.0, 3.0], [3], &device), &mut rng(0))
        .unwrap();
    assert!(matches!(
        majority_vote::<1>(&[a.clone(), other], &device),
        Err(DecodeError::WrongCodec { .. })
    ));
    let mut bytes = a.as_bytes().to_vec();
    bytes[2] = 2; // the header's flags byte: only bit 0 (all zero) is defined
    let undefined = Payload::from_bytes(bytes).unwrap();
    assert!(matches!(
        majority_vote::<1>(&[a.clone(), undefined], &device),
        Err(DecodeError::FieldOutOfRange {
            field: "sign flags",
            ..
        })
    ));
    assert!(matches!(
        majority_vote::<1>(&[a.clone(), sign(vec![1.0; 4])], &device),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    assert!(majority_vote_into(&[a.borrow()], &mut [0.0; 4]).is_err());
}

// ---------------------------------------------------------------------------------------------
// ATOMO

#[test]
fn water_filling_reference_values() {
    let p = probabilities(&[4.0, 3.0, 2.0, 1.0], 2.0);
    for (a, b) in p.iter().zip([0.8, 0.6, 0.4, 0.2]) {
        assert!((a - b).abs() < 1e-12, "{p:?}");
    }
    let excess: f64 = [4.0_f64, 3.0, 2.0, 1.0]
        .iter()
        .zip(&p)
        .map(|(l, q)| l * l / q - l * l)
        .sum();
    assert!((excess - 20.0).abs() < 1e-9, "excess variance {excess}");
    let p = probabilities(&[10.0, 1.0, 1.0, 1.0], 2.0);
    for (a, b) in p.iter().zip([1.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]) {
        assert!((a - b).abs() < 1e-12, "{p:?}");
    }
    assert_eq!(probabilities(&[0.0, 5.0, 0.0], 1.0), vec![0.0, 1.0, 0.0]);
}

/// Σp = s exactly, p monotone in |λ|, and no other feasible p (random ones, 0 < p ≤ 1,
/// Σp = s) has a lower variance Σλ²/p.
#[test]
fn water_filling_is_feasible_monotone_and_optimal() {
    let mut r = rng(14);
    for trial in 0..50 {
        let n = 2 + trial % 20;
        let lambda: Vec<f32> = gaussian(n, 200 + trial as u64)
            .iter()
            .map(|x| x * x * x)
            .collect();
        let s = r.random_range(0.1..n as f64);
        let p = probabilities(&lambda, s);
        assert!((p.iter().sum::<f64>() - s).abs() < 1e-9 * n as f64);
        assert!(p.iter().all(|&q| q > 0.0 && q <= 1.0));
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| lambda[a].abs().total_cmp(&lambda[b].abs()));
        assert!(order.windows(2).all(|w| p[w[0]] <= p[w[1]] + 1e-12));
        let var = |q: &[f64]| {
            lambda
                .iter()
                .zip(q)
                .map(|(l, q)| (*l as f64).powi(2) / q)
                .sum::<f64>()
        };
        let best = var(&p);
        for _ in 0..20 {
            // A random feasible p: random weights scaled to sum s, capped at 1, mass moved on.
            let mut q: Vec<f64> = (0..n).map(|_| r.random_range(0.01..1.0)).collect();
            for _ in 0..50 {
                let total: f64 = q.iter().sum();
                q.iter_mut().for_each(|x| *x = (*x * s / total).min(1.0));
            }
            if (q.iter().sum::<f64>() - s).abs() < 1e-6 {
                assert!(
                    var(&q) >= best * (1.0 - 1e-9),
                    "random p beats water-filling"
                );
            }
        }
    }
}

/// Entry-wise ATOMO with the QSGD-equivalent budget s = ‖g‖₁/‖g‖₂ has 1-level QSGD's
/// probabilities |g_i|/‖g‖₂; with the TernGrad budget ‖g‖₁/max|g| it has TernGrad's |g_i|/max|g|.
#[test]
fn entry_wise_atomo_reproduces_qsgd_and_terngrad_probabilities() {
    let g = gaussian(100, 15);
    let l1: f64 = g.iter().map(|x| x.abs() as f64).sum();
    let l2 = norm2(&g).sqrt();
    let linf = g.iter().fold(0.0_f64, |m, x| m.max(x.abs() as f64));
    let qsgd = probabilities(&g, Budget::QsgdEquivalent.resolve(100, l1, l2, linf));
    let tern = probabilities(&g, Budget::TernGradEquivalent.resolve(100, l1, l2, linf));
    for (i, &x) in g.iter().enumerate() {
        assert!((qsgd[i] - x.abs() as f64 / l2).abs() < 1e-9);
        assert!((tern[i] - x.abs() as f64 / linf).abs() < 1e-9);
    }
    // And the codec's empirical keep-rates match them: the mean number of atoms sent is s.
    let mut codec = Atomo::new(EntryWise, Budget::QsgdEquivalent).unwrap();
    let (mean, _) = monte_carlo(&mut codec, &g, 1000, 16);
    let variance: f64 = g
        .iter()
        .zip(&qsgd)
        .map(|(l, p)| (*l as f64).powi(2) / p)
        .sum::<f64>()
        - norm2(&g);
    mean.assert_unbiased("entry-wise ATOMO", &g, variance, 9.0);
}

/// Unbiasedness of spectral and Fourier ATOMO with their exact variance Σλ²/p − Σλ².
#[test]
fn spectral_and_fourier_atomo_are_unbiased() {
    let g = gaussian(6 * 5, 17);
    let device = device();
    // Spectral: singular values of the 6×5 matrix, from the codec's own SVD of the same matrix.
    let (_, s, _) = burn::linalg::svd::<2, 1>(tensor(g.clone(), [6, 5], &device), 64);
    let sigma = to_vec(&s);
    let p = probabilities(&sigma, 2.0);
    let variance: f64 = sigma
        .iter()
        .zip(&p)
        .map(|(l, q)| (*l as f64).powi(2) / q - (*l as f64).powi(2))
        .sum();
    let mut codec = Atomo::new(Spectral::full(), Budget::Atoms(2.0)).unwrap();
    let mut r = rng(18);
    let mut mean = VectorMean::new(g.len());
    for _ in 0..1500 {
        let payload = codec
            .compress(tensor(g.clone(), [6, 5], &device), &mut r)
            .unwrap();
        let out: Tensor<2> = codec.decompress(&payload, &device).unwrap();
        mean.push(&to_vec(&out));
    }
    mean.assert_unbiased("spectral ATOMO", &g, variance, 9.0);

    // Fourier on 24 entries (padded to 32): λ are the real-DFT coefficients, whose squares sum to
    // ‖g‖² (orthonormal basis); the variance uses the padded coefficients.
    let h = gaussian(24, 19);
    let mut codec = Atomo::new(Fourier, Budget::Fraction(0.25)).unwrap();
    let (mean, _) = monte_carlo(&mut codec, &h, 1500, 20);
    // Budget 8 atoms out of 32; with s ≤ ‖λ‖₁/max|λ| the variance is (Σ|λ|)²/s − Σλ² ≤ 32·Σλ²/8.
    let variance = 4.0 * norm2(&h);
    mean.assert_unbiased("Fourier ATOMO", &h, variance, 9.0);
}

/// The Fourier atoms are orthonormal: with a full budget every atom is sent with p = 1 and the
/// decoding is exact; and a single-frequency signal needs two atoms.
#[test]
fn fourier_atomo_is_exact_with_a_full_budget() {
    let h = gaussian(20, 21);
    let mut codec = Atomo::new(Fourier, Budget::Fraction(1.0)).unwrap();
    let (out, _) = round_trip(&mut codec, &h, &mut rng(0));
    assert_slices_close(&out, &h, 1e-4);
    let cosine: Vec<f32> = (0..16)
        .map(|j| (2.0 * std::f32::consts::PI * 3.0 * j as f32 / 16.0).cos())
        .collect();
    let mut codec = Atomo::new(Fourier, Budget::Atoms(1.0)).unwrap();
    let (out, wire) = round_trip(&mut codec, &cosine, &mut rng(0));
    assert_slices_close(&out, &cosine, 1e-4);
    assert_eq!(wire, Header::len_for_rank(1) + sparse_body_bytes(16, 1));
}

#[test]
fn spectral_atomo_low_rank_and_truncated() {
    let device = device();
    // A rank-1 matrix is sent exactly by one atom.
    let u = gaussian(8, 22);
    let v = gaussian(6, 23);
    let m: Vec<f32> = u
        .iter()
        .flat_map(|a| v.iter().map(move |b| a * b))
        .collect();
    let mut codec = Atomo::new(Spectral::full(), Budget::Atoms(1.0)).unwrap();
    let payload = codec
        .compress(tensor(m.clone(), [8, 6], &device), &mut rng(0))
        .unwrap();
    assert_eq!(
        payload.wire_bytes(),
        Header::len_for_rank(2) + 4 + 4 * (8 + 6 + 1)
    );
    let out: Tensor<2> = codec.decompress(&payload, &device).unwrap();
    assert_slices_close(&to_vec(&out), &m, 1e-4);
    // The randomized rank-r SVD finds the same matrix.
    let mut codec = Atomo::new(Spectral::truncated(1, 2).unwrap(), Budget::Atoms(1.0)).unwrap();
    assert!(!codec.is_unbiased());
    let big_u = gaussian(40, 24);
    let big_v = gaussian(30, 25);
    let big: Vec<f32> = big_u
        .iter()
        .flat_map(|a| big_v.iter().map(move |b| a * b))
        .collect();
    let payload = codec
        .compress(tensor(big.clone(), [40, 30], &device), &mut rng(1))
        .unwrap();
    let out: Tensor<2> = codec.decompress(&payload, &device).unwrap();
    assert_slices_close(&to_vec(&out), &big, 1e-3);
}

// ---------------------------------------------------------------------------------------------
// Random-k, top-k, error feedback, PowerSGD

#[test]
fn random_k_is_unbiased() {
    let g = gaussian(100, 26);
    let mut codec = RandomK::new(Count::Entries(10)).unwrap();
    let (mean, mse) = monte_carlo(&mut codec, &g, 2000, 27);
    let variance = (100.0 / 10.0 - 1.0) * norm2(&g);
    mean.assert_unbiased("random-k", &g, variance, 9.0);
    assert_relative_close("random-k variance", mse, variance, 0.1);
}

#[test]
fn top_k_keeps_the_largest_entries() {
    let v = vec![0.1, -5.0, 0.3, 4.0, -0.2, 0.0, 3.0];
    let mut codec = TopK::new(Count::Entries(3)).unwrap();
    let (out, wire) = round_trip(&mut codec, &v, &mut rng(0));
    assert_eq!(out, vec![0.0, -5.0, 0.0, 4.0, 0.0, 0.0, 3.0]);
    // 7 atoms: a bitmap (1 byte) beats 3 u32 indices.
    assert_eq!(wire, Header::len_for_rank(1) + 4 + 1 + 12);
}

/// Σ_t c_t + e_T = Σ_t g_t over 20 steps of error feedback around top-k and scaled sign.
#[test]
fn error_feedback_conserves_the_gradient_sum() {
    let device = device();
    for boxed in [0, 1] {
        let mut sum_g = vec![0.0_f64; 50];
        let mut sum_c = vec![0.0_f64; 50];
        let mut r = rng(28);
        let mut top = ErrorFeedback::new(TopK::new(Count::Entries(5)).unwrap());
        let mut sign = ErrorFeedback::new(ScaledSign);
        for step in 0..20 {
            let g = gaussian(50, 300 + step);
            let t = tensor(g.clone(), [5, 10], &device);
            let c: Tensor<2> = if boxed == 0 {
                let p = top.compress(t, &mut r).unwrap();
                top.decompress(&p, &device).unwrap()
            } else {
                let p = sign.compress(t, &mut r).unwrap();
                sign.decompress(&p, &device).unwrap()
            };
            for (i, (a, b)) in g.iter().zip(to_vec(&c)).enumerate() {
                sum_g[i] += *a as f64;
                sum_c[i] += b as f64;
            }
        }
        let (e, shape) = if boxed == 0 {
            top.residual().unwrap()
        } else {
            sign.residual().unwrap()
        };
        assert_eq!(shape, &[5, 10]);
        for ((c, e), g) in sum_c.iter().zip(to_vec(e)).zip(&sum_g) {
            assert!((c + e as f64 - g).abs() < 1e-4, "{c} + {e} ≠ {g}");
        }
    }
}

#[test]
fn error_feedback_keeps_its_residual_when_encoding_fails() {
    let device = device();
    let mut ef = ErrorFeedback::new(TopK::new(Count::Entries(1)).unwrap());
    ef.compress(tensor(vec![1.0, 2.0], [2], &device), &mut rng(0))
        .unwrap();
    let before = to_vec(ef.residual().unwrap().0);
    assert_eq!(before, vec![1.0, 0.0]);
    let err = ef
        .compress(tensor(vec![f32::NAN, 2.0], [2], &device), &mut rng(0))
        .unwrap_err();
    assert!(matches!(err, CompressError::NonFinite { bad: 1, total: 2 }));
    assert_eq!(to_vec(ef.residual().unwrap().0), before);
}

/// The error-feedback residual saved with `Compressor::state` and loaded into a fresh wrapper
/// gives the same next payload; a stateless codec and a residual that does not fill its shape
/// are rejected.
#[test]
fn error_feedback_state_round_trips() {
    let device = device();
    let mut ef = ErrorFeedback::new(TopK::new(Count::Entries(2)).unwrap());
    ef.compress(tensor(gaussian(12, 40), [3, 4], &device), &mut rng(0))
        .unwrap();
    let (values, shape) = ef.state().unwrap();
    assert_eq!(shape, vec![3, 4]);
    let mut restored = ErrorFeedback::new(TopK::new(Count::Entries(2)).unwrap());
    assert!(restored.state().is_none(), "no state before the first step");
    restored.load_state(values.clone(), shape, &device).unwrap();
    let next = tensor(gaussian(12, 41), [3, 4], &device);
    let a = ef.compress(next.clone(), &mut rng(1)).unwrap();
    let b = restored.compress(next, &mut rng(1)).unwrap();
    assert_eq!(a.into_bytes(), b.into_bytes());
    assert!(matches!(
        restored.load_state(values.clone(), vec![5], &device),
        Err(CompressError::InvalidParameter { field: "state", .. })
    ));
    assert!(Qsgd::new(4).unwrap().state().is_none());
    assert!(
        Qsgd::new(4)
            .unwrap()
            .load_state(values, vec![3, 4], &device)
            .is_err()
    );
}

/// Warm-started rank-2 PowerSGD iterations on a fixed matrix (no error feedback: the residual
/// is reset each step) converge to the optimal rank-2 approximation: the Frobenius error reaches
/// the SVD's tail √(σ₃² + …) within 30 steps.
#[test]
fn powersgd_warm_start_reaches_the_optimal_rank_r_error() {
    let device = device();
    let (rows, cols) = (20, 12);
    // A matrix with a clear spectrum: singular values 10, 5, 1, 0.5, ...
    let g = gaussian(rows * cols, 29);
    let m = tensor(g, [rows, cols], &device);
    let (u, _, vt) = burn::linalg::svd::<2, 1>(m, 64);
    let spectrum: Vec<f32> = (0..cols)
        .map(|i| [10.0, 5.0, 1.0, 0.5][i.min(3)] / (1 + i.saturating_sub(3)) as f32)
        .collect();
    let s = tensor(spectrum.clone(), [1, cols], &device);
    let matrix = u.mul(s).matmul(vt);
    let optimal: f64 = spectrum[2..]
        .iter()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let config = PowerSgdConfig::new(2).unwrap().with_seed(3);
    let mut state = PowerSgd::new(&config, rows, cols, 0, &device);
    let mut error = f64::INFINITY;
    for _ in 0..30 {
        state.reset_error();
        let out = state.step_local(matrix.clone()).unwrap();
        error = (matrix.clone() - out)
            .square()
            .sum()
            .into_scalar::<f64>()
            .sqrt();
    }
    assert_relative_close("PowerSGD rank-2 error after 30 steps", error, optimal, 1e-3);
}

#[test]
fn powersgd_helpers() {
    let device = device();
    assert_eq!(compression_rate(100, 100, 2), 25.0);
    let config = PowerSgdConfig::new(4).unwrap();
    assert!(config.compresses(&[64, 3, 3, 3]));
    assert!(!config.compresses(&[1000]), "rank-1 tensors are sent dense");
    assert!(!config.compresses(&[4, 4]), "rate 0.5 < 2");
    // Orthonormal columns, and a zero column stays zero instead of dividing by ~0.
    let mut p = vec![1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 1.0, 0.0];
    orthonormalize(&mut p, 3, 3, 1e-8);
    let q = tensor(p, [3, 3], &device);
    let gram = to_vec(&q.clone().transpose().matmul(q));
    assert_slices_close(&gram, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], 1e-5);
    assert!(PowerSgdConfig::new(0).is_err());
}

/// Rank-deficient input: a column equal to an earlier one (`[c, 0, c]`) leaves only rounding
/// residue after projection; that residue must become a zero column, not a normalised one that
/// is nearly parallel to the first (an absolute ε of 1e-8 kept it, with dot 0.99). And PowerSGD
/// at rank 2 on a rank-1 gradient (a batch of one through a linear layer) then reproduces it
/// exactly instead of keeping a relative error² of 0.3.
#[test]
fn powersgd_on_rank_deficient_input() {
    let device = device();
    let c = [0.3_f32, -1.7, 2.2, 0.9];
    let mut p = Vec::new();
    for row in c {
        p.extend_from_slice(&[row, 0.0, row]);
    }
    orthonormalize(&mut p, 4, 3, 1e-8);
    let q = tensor(p, [4, 3], &device);
    let gram = to_vec(&q.clone().transpose().matmul(q));
    assert_slices_close(&gram, &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 1e-5);

    let (u, v) = (gaussian(12, 3), gaussian(9, 4));
    let rank_one: Vec<f32> = u
        .iter()
        .flat_map(|a| v.iter().map(move |b| a * b))
        .collect();
    let g = tensor(rank_one.clone(), [12, 9], &device);
    let mut state = PowerSgd::new(&PowerSgdConfig::new(2).unwrap(), 12, 9, 0, &device);
    let out = to_vec(&state.step_local(g).unwrap());
    let err2: f32 = out
        .iter()
        .zip(&rank_one)
        .map(|(a, b)| (a - b).powi(2))
        .sum();
    let norm2: f32 = rank_one.iter().map(|b| b * b).sum();
    assert!(err2 / norm2 < 1e-8, "relative error² {}", err2 / norm2);
}

/// A NaN or ±Inf in the gradient is `NonFinite` at `start`, a summed `P` or an averaged `Q`
/// beyond f32 is `Overflow`; none of them changes the state (`Q`, the residual), so the next
/// finite step is the one a state that never saw them takes. Before, a NaN `P` became zero
/// columns in the Gram–Schmidt: a zero update, and a NaN residual kept for every later step.
#[test]
fn powersgd_refuses_non_finite_and_overflowing_steps_and_keeps_its_state() {
    let device = device();
    let (rows, cols) = (12, 40);
    let config = PowerSgdConfig::new(2).unwrap();
    let g = gaussian(rows * cols, 41);
    let grad = || tensor(g.clone(), [rows, cols], &device);
    let mut state = PowerSgd::new(&config, rows, cols, 0, &device);
    state.step_local(grad()).unwrap();
    let mut reference = state.clone();
    let (q, e) = (state.q().to_vec(), state.error());
    for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut bad = g.clone();
        bad[17] = poison;
        let err = state.start(tensor(bad, [rows, cols], &device)).unwrap_err();
        assert!(
            matches!(err, CompressError::NonFinite { bad: 1, total } if total == rows * cols),
            "{poison}: {err}"
        );
    }
    // Finite entries whose P = ΔQ overflows f32.
    assert!(matches!(
        state.start(tensor(
            vec![f32::MAX / 2.0; rows * cols],
            [rows, cols],
            &device
        )),
        Err(CompressError::Overflow)
    ));
    let started = state.start(grad()).unwrap();
    let p = started.p().to_vec();
    let mut huge = p.clone();
    huge[0] = f32::INFINITY;
    assert!(matches!(
        state.project(started, &huge),
        Err(CompressError::Overflow)
    ));
    let started = state.start(grad()).unwrap();
    let p_sum = started.p().to_vec();
    let projected = state.project(started, &p_sum).unwrap();
    let q_huge = vec![f32::MAX / 2.0; projected.q().len()];
    assert!(matches!(
        state.finish(projected, &q_huge),
        Err(CompressError::Overflow)
    ));
    assert_eq!(state.q(), &q[..], "Q changed by a refused step");
    assert_eq!(state.error(), e, "the residual changed by a refused step");
    let next = to_vec(&state.step_local(grad()).unwrap());
    assert_eq!(next, to_vec(&reference.step_local(grad()).unwrap()));
    assert!(next.iter().all(|v| v.is_finite()));
    // Nor does a checkpoint bring one in.
    let mut e_nan = e.clone();
    e_nan[3] = f32::NAN;
    assert!(matches!(
        PowerSgd::restore(&config, rows, cols, q.clone(), e_nan, &device),
        Err(CompressError::InvalidParameter { field: "error", .. })
    ));
    assert!(PowerSgd::restore(&config, rows, cols, q, e, &device).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Wire formats, zeros, errors

type Run = Box<dyn Fn(&[f32], &mut ChaCha8Rng) -> (Vec<f32>, Vec<u8>)>;

fn all_codecs(shape: &[usize]) -> Vec<(&'static str, Run)> {
    let shape = shape.to_vec();
    macro_rules! entry {
        ($name:expr, $make:expr) => {{
            let shape = shape.clone();
            (
                $name,
                Box::new(move |v: &[f32], r: &mut ChaCha8Rng| run_shape($make, v, &shape, r))
                    as Run,
            )
        }};
    }
    vec![
        entry!("identity", Identity),
        entry!("half", Half::new(HalfFormat::F16)),
        entry!("bf16", Half::new(HalfFormat::Bf16)),
        entry!("sign", Sign),
        entry!("scaled sign", ScaledSign),
        entry!("qsgd", Qsgd::new(3).unwrap()),
        entry!("qsgd bucket", Qsgd::new(3).unwrap().with_bucket(5).unwrap()),
        entry!("terngrad", TernGrad::new()),
        entry!(
            "terngrad base3",
            TernGrad::new().with_packing(TritPacking::Base3)
        ),
        entry!("top-k", TopK::new(Count::Fraction(0.3)).unwrap()),
        entry!("random-k", RandomK::new(Count::Fraction(0.3)).unwrap()),
        entry!(
            "atomo entry",
            Atomo::new(EntryWise, Budget::Fraction(0.3)).unwrap()
        ),
        entry!(
            "atomo spectral",
            Atomo::new(Spectral::full(), Budget::Atoms(1.0)).unwrap()
        ),
        entry!(
            "atomo fourier",
            Atomo::new(Fourier, Budget::Fraction(0.3)).unwrap()
        ),
        entry!("error feedback", ErrorFeedback::new(ScaledSign)),
    ]
}

fn run_shape<C: Compressor>(
    mut codec: C,
    v: &[f32],
    shape: &[usize],
    r: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<u8>) {
    let device = device();
    macro_rules! go {
        ($d:literal) => {{
            let dims: [usize; $d] = shape.try_into().unwrap();
            let p = codec
                .compress(tensor(v.to_vec(), dims, &device), r)
                .unwrap();
            let bytes = p.into_bytes();
            let received = Payload::from_bytes_with_limit(bytes.clone(), MAX_ENTRIES).unwrap();
            let out: Tensor<$d> = codec.decompress(&received, &device).unwrap();
            assert_eq!(out.dims(), dims);
            (to_vec(&out), bytes)
        }};
    }
    match shape.len() {
        1 => go!(1),
        2 => go!(2),
        4 => go!(4),
        d => unreachable!("rank {d}"),
    }
}

/// Every codec, every shape (rank 1, 2, 4; odd lengths; empty): the decoded tensor has the
/// input's shape, `g = 0` decodes to exactly 0, and `wire_bytes` equals the closed form.
#[test]
fn wire_bytes_closed_forms_shapes_and_zeros() {
    for shape in [
        vec![1usize],
        vec![7],
        vec![33],
        vec![0],
        vec![3, 5],
        vec![1, 9],
        vec![2, 3, 1, 5],
        vec![2, 0, 3, 1],
    ] {
        let n: usize = shape.iter().product();
        let h = Header::len_for_rank(shape.len());
        let (rows, cols) = matrix_view(&shape);
        let v = gaussian(n, 31);
        for (name, run) in all_codecs(&shape) {
            let (zeros, zero_bytes) = run(&vec![0.0; n], &mut rng(1));
            assert!(
                zeros.iter().all(|&x| x == 0.0),
                "{name} {shape:?}: zero in, {zeros:?} out"
            );
            let (out, bytes) = run(&v, &mut rng(2));
            assert_eq!(out.len(), n, "{name} {shape:?}");
            // The atom count a variable-size body starts with.
            let count = |b: &[u8]| u32::from_le_bytes(b[h..h + 4].try_into().unwrap()) as usize;
            let k_frac = ((0.3 * n as f64).ceil() as usize).min(n);
            let closed_form = |bytes: &[u8]| match name {
                "identity" => h + 4 * n,
                "half" | "bf16" => h + 2 * n,
                "sign" => h + n.div_ceil(8),
                "scaled sign" | "error feedback" => h + 4 + n.div_ceil(8),
                "qsgd" => h + 8 + 4 * (n > 0) as usize + packed_len(n, 3),
                "qsgd bucket" => h + 8 + 4 * n.div_ceil(5) + packed_len(n, 3),
                "terngrad" => h + 4 + n.div_ceil(4),
                "terngrad base3" => h + 4 + n.div_ceil(5),
                "top-k" => h + sparse_body_bytes(n, k_frac),
                "random-k" => h + 12 + 4 * k_frac,
                // Random numbers of atoms: the closed form for the count actually sent.
                "atomo entry" => h + sparse_body_bytes(n, count(bytes)),
                "atomo fourier" => {
                    h + sparse_body_bytes(n.max(2).next_power_of_two(), count(bytes))
                }
                "atomo spectral" => h + 4 + count(bytes) * 4 * (rows + cols + 1),
                other => unreachable!("no closed form for {other}"),
            };
            assert_eq!(bytes.len(), closed_form(&bytes), "{name} {shape:?}");
            assert_eq!(
                zero_bytes.len(),
                closed_form(&zero_bytes),
                "{name} {shape:?}: zeros"
            );
            if name.starts_with("atomo") {
                assert_eq!(
                    count(&zero_bytes),
                    0,
                    "{name}: a zero gradient sends no atom"
                );
            }
            if name == "identity" {
                assert_eq!(out, v);
            }
        }
    }
}

/// A codec under test, as a closure returning its encoding error.
type Encode = Box<dyn Fn(Tensor<1>, &mut ChaCha8Rng) -> CompressError>;

#[test]
fn non_finite_gradients_are_refused_with_counts() {
    let device = device();
    let g = tensor(
        vec![1.0, f32::NAN, f32::INFINITY, -2.0, f32::NEG_INFINITY],
        [5],
        &device,
    );
    let expected = CompressError::NonFinite { bad: 3, total: 5 };
    let mut r = rng(0);
    assert_eq!(Identity.compress(g.clone(), &mut r).unwrap_err(), expected);
    assert_eq!(Sign.compress(g.clone(), &mut r).unwrap_err(), expected);
    assert_eq!(
        Qsgd::new(4)
            .unwrap()
            .compress(g.clone(), &mut r)
            .unwrap_err(),
        expected
    );
    assert_eq!(
        TernGrad::new().compress(g.clone(), &mut r).unwrap_err(),
        expected
    );
    assert_eq!(
        Atomo::new(Fourier, Budget::Atoms(2.0))
            .unwrap()
            .compress(g.clone(), &mut r)
            .unwrap_err(),
        expected
    );
    // Each host kernel checks in its own pass: every codec, and the variants with their own
    // paths (buckets, clipping, a shared scale, top-k's histogram and its keep-all case).
    let codecs: Vec<(&str, Encode)> = vec![
        (
            "half",
            Box::new(|g, r| Half::default().compress(g, r).unwrap_err()),
        ),
        (
            "scaled sign",
            Box::new(|g, r| ScaledSign.compress(g, r).unwrap_err()),
        ),
        (
            "qsgd, buckets of 2",
            Box::new(|g, r| {
                let mut q = Qsgd::new(4).unwrap().with_bucket(2).unwrap();
                q.compress(g, r).unwrap_err()
            }),
        ),
        (
            "qsgd, Elias-gamma, buckets of 2 (norms taken in the coding pass)",
            Box::new(|g, r| {
                let q = Qsgd::new(4).unwrap().with_bucket(2).unwrap();
                let mut q = q.with_coding(LevelCoding::EliasGamma);
                q.compress(g, r).unwrap_err()
            }),
        ),
        (
            "terngrad, clipped",
            Box::new(|g, r| {
                let t = TernGrad::new().with_clipping(2.5).unwrap();
                t.clone().compress(g, r).unwrap_err()
            }),
        ),
        (
            "terngrad, shared scale",
            Box::new(|g, r| TernGrad::new().compress_with_scale(g, 10.0, r).unwrap_err()),
        ),
        (
            "top-k, k = 1",
            Box::new(|g, r| {
                TopK::new(Count::Entries(1))
                    .unwrap()
                    .compress(g, r)
                    .unwrap_err()
            }),
        ),
        (
            "top-k, k = n",
            Box::new(|g, r| {
                TopK::new(Count::Entries(5))
                    .unwrap()
                    .compress(g, r)
                    .unwrap_err()
            }),
        ),
        (
            "random-k",
            Box::new(|g, r| {
                RandomK::new(Count::Entries(2))
                    .unwrap()
                    .compress(g, r)
                    .unwrap_err()
            }),
        ),
        (
            "atomo entry-wise",
            Box::new(|g, r| {
                let mut a = Atomo::new(EntryWise, Budget::Atoms(2.0)).unwrap();
                a.compress(g, r).unwrap_err()
            }),
        ),
        (
            "atomo spectral",
            Box::new(|g, r| {
                let mut a = Atomo::new(Spectral::full(), Budget::Atoms(1.0)).unwrap();
                a.compress(g, r).unwrap_err()
            }),
        ),
        (
            "error feedback",
            Box::new(|g, r| {
                let mut e = ErrorFeedback::new(TopK::new(Count::Entries(1)).unwrap());
                e.compress(g, r).unwrap_err()
            }),
        ),
    ];
    for (name, encode) in codecs {
        assert_eq!(encode(g.clone(), &mut r), expected, "{name}");
    }
}

#[test]
fn invalid_parameters_are_named() {
    assert!(matches!(
        Qsgd::new(0),
        Err(CompressError::InvalidParameter {
            field: "levels",
            ..
        })
    ));
    assert!(matches!(
        Qsgd::new(4).unwrap().with_bucket(0),
        Err(CompressError::InvalidParameter {
            field: "bucket",
            ..
        })
    ));
    assert!(matches!(
        TopK::new(Count::Entries(0)),
        Err(CompressError::InvalidParameter { field: "k", .. })
    ));
    assert!(matches!(
        RandomK::new(Count::Fraction(1.5)),
        Err(CompressError::InvalidParameter { .. })
    ));
    assert!(Atomo::new(EntryWise, Budget::Atoms(-1.0)).is_err());
    assert!(TernGrad::new().with_clipping(f32::NAN).is_err());
}

#[test]
fn malformed_payloads_are_decode_errors() {
    let device = device();
    let mut r = rng(0);
    let good = Qsgd::new(3)
        .unwrap()
        .compress(tensor(gaussian(10, 1), [10], &device), &mut r)
        .unwrap();
    let bytes = good.as_bytes().to_vec();
    let q = Qsgd::new(3).unwrap();
    // Truncated anywhere: an error, never a panic.
    for cut in 0..bytes.len() {
        let result = Payload::from_bytes(bytes[..cut].to_vec())
            .and_then(|p| q.decompress::<1>(&p, &device).map(|_| ()));
        assert!(result.is_err(), "cut at {cut}");
    }
    // Trailing bytes.
    let mut long = bytes.clone();
    long.push(0);
    let p = Payload::from_bytes(long).unwrap();
    assert!(matches!(
        q.decompress::<1>(&p, &device),
        Err(DecodeError::TrailingBytes { extra: 1 })
    ));
    // Wrong codec, version, rank.
    let p = Payload::from_bytes(bytes.clone()).unwrap();
    assert!(matches!(
        Sign.decompress::<1>(&p, &device),
        Err(DecodeError::WrongCodec { .. })
    ));
    assert!(matches!(
        q.decompress::<2>(&p, &device),
        Err(DecodeError::ShapeMismatch { .. })
    ));
    let mut v2 = bytes.clone();
    v2[1] = 2;
    assert!(matches!(
        Payload::from_bytes(v2),
        Err(DecodeError::UnsupportedVersion { version: 2, .. })
    ));
    let mut unknown = bytes.clone();
    unknown[0] = 200;
    assert_eq!(
        Payload::from_bytes(unknown),
        Err(DecodeError::UnknownCodec(200))
    );
    // A huge shape is refused before allocation.
    let mut huge = vec![CodecId::RandomK as u8, 1, 0, 0, 2];
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Payload::from_bytes(huge),
        Err(DecodeError::FieldOutOfRange { field: "shape", .. })
    ));
}

/// Gradients of networks with dead units are rank deficient (zero rows): spectral ATOMO still
/// decomposes them (no SVD failure) and, sending every non-zero atom, reproduces them; by
/// Jacobi (smaller side up to 256) and by the larger matrices' SVD.
#[test]
fn spectral_atomo_handles_rank_deficient_gradients() {
    let device = device();
    for (rows, cols, dead) in [(16usize, 12usize, 5usize), (300, 264, 40)] {
        let mut g = gaussian(rows * cols, 40);
        for r in (0..rows).filter(|r| r % 3 == 1).take(dead) {
            g[r * cols..(r + 1) * cols].fill(0.0);
        }
        // Two equal rows make it rank deficient beyond the zero rows.
        let (a, b) = g.split_at_mut(3 * cols);
        b[..cols].copy_from_slice(&a[..cols]);
        let rank = (rows - dead - 1).min(cols);
        let mut codec = Atomo::new(Spectral::full(), Budget::Fraction(1.0)).unwrap();
        let (out, _) = run_shape(codec.clone(), &g, &[rows, cols], &mut rng(1));
        assert_slices_close(&out, &g, 1e-4);
        let payload = codec
            .compress(tensor(g, [rows, cols], &device), &mut rng(2))
            .unwrap();
        let sent = (payload.wire_bytes() - Header::len_for_rank(2) - 4) / (4 * (rows + cols + 1));
        assert!(
            sent <= rank,
            "{rows} × {cols}: at most rank {rank} atoms carry weight, {sent} sent"
        );
    }
}

/// QSGD's bucket norms are computed as `m·‖v/m‖`: a bucket of entries near 1e-30 (whose squares
/// underflow f32) keeps its norm instead of decoding to zeros, and entries near 1e20 (whose
/// squares overflow) encode instead of failing. The decoded vector has the input's scale.
#[test]
fn qsgd_norms_survive_tiny_and_huge_entries() {
    let device = device();
    for scale in [1e-30_f32, 1e20] {
        let g: Vec<f32> = gaussian(64, 5).iter().map(|x| x * scale).collect();
        let mut qsgd = Qsgd::new(4).unwrap();
        let payload = qsgd
            .compress(tensor(g.clone(), [64], &device), &mut rng(3))
            .unwrap_or_else(|e| panic!("scale {scale}: {e}"));
        let out = to_vec(&qsgd.decompress::<1>(&payload, &device).unwrap());
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let ratio = norm(&out) / norm(&g);
        assert!(
            (0.5..3.0).contains(&ratio),
            "scale {scale}: ‖decoded‖/‖g‖ = {ratio}"
        );
    }
}

/// bf16 rounding would carry f32::MAX past bf16's largest finite value: the encoder clamps, so
/// the payload decodes (to ±bf16::MAX) instead of holding ±Inf.
#[test]
fn bf16_saturates_instead_of_overflowing() {
    let device = device();
    let mut bf16 = Half::new(HalfFormat::Bf16);
    let g = tensor(vec![f32::MAX, -f32::MAX, 1.0], [3], &device);
    let payload = bf16.compress(g, &mut rng(0)).unwrap();
    let out = to_vec(&bf16.decompress::<1>(&payload, &device).unwrap());
    assert!(out.iter().all(|v| v.is_finite()), "{out:?}");
    assert!(out[0] > 3e38 && out[1] < -3e38, "{out:?}");
}

/// ATOMO's budget depends on ℓ₁/ℓ₂, which is scale-free: entries of 1e20 (whose squares overflow
/// f32) keep exactly the atoms, rescaled, that the same gradient at scale 1 keeps.
#[test]
fn atomo_budget_is_scale_free() {
    let device = device();
    let g = gaussian(64, 9);
    let decode = |scale: f32| {
        let mut atomo = Atomo::new(EntryWise, Budget::QsgdEquivalent).unwrap();
        let v: Vec<f32> = g.iter().map(|x| x * scale).collect();
        let p = atomo
            .compress(tensor(v, [64], &device), &mut rng(4))
            .unwrap();
        to_vec(&atomo.decompress::<1>(&p, &device).unwrap())
    };
    let (small, big) = (decode(1.0), decode(1e20));
    let kept = |v: &[f32]| v.iter().filter(|x| **x != 0.0).count();
    assert!(kept(&small) > 0);
    assert_eq!(kept(&small), kept(&big));
    let rescaled: Vec<f32> = big.iter().map(|x| x / 1e20).collect();
    assert_slices_close(&rescaled, &small, 1e-4);
}

/// The mean of several workers' payloads accumulates in one buffer, decoded from the received
/// bytes with no copy, and equals the mean of the decoded tensors; a payload of the wrong shape
/// or codec is refused without touching the buffer.
#[test]
fn the_mean_of_payloads_accumulates_in_one_buffer() {
    let device = device();
    let shape = [24, 17];
    let workers: Vec<Vec<u8>> = (0..4)
        .map(|w| {
            let g = tensor(gaussian(24 * 17, 40 + w), shape, &device);
            let mut qsgd = QsgdConfig::new(16).with_bucket(Some(64)).init();
            qsgd.compress(g, &mut rng(w)).unwrap().into_bytes()
        })
        .collect();
    let qsgd = QsgdConfig::new(16).with_bucket(Some(64)).init();
    // ANCHOR: mean_of_payloads
    let mut mean = vec![0.0f32; 24 * 17];
    for received in &workers {
        // The receiver knows the parameter's shape: it is the only shape it accepts.
        let payload = PayloadRef::parse_expecting(received, &[24, 17]).unwrap();
        qsgd.decode_add(&payload, 1.0 / workers.len() as f32, &mut mean)
            .unwrap();
    }
    // ANCHOR_END: mean_of_payloads
    let mut expected = vec![0.0f32; 24 * 17];
    for received in &workers {
        let decoded: Tensor<2> = qsgd
            .decompress(&Payload::from_bytes(received.clone()).unwrap(), &device)
            .unwrap();
        for (e, d) in expected.iter_mut().zip(to_vec(&decoded)) {
            *e += d / 4.0;
        }
    }
    assert_slices_close(&mean, &expected, 1e-6);
    let before = mean.clone();
    let wrong_shape = PayloadRef::parse_expecting(&workers[0], &[17, 24]);
    assert!(matches!(
        wrong_shape,
        Err(DecodeError::ShapeMismatch { .. })
    ));
    let payload = PayloadRef::parse(&workers[0]).unwrap();
    assert!(matches!(
        Sign.decode_add(&payload, 1.0, &mut mean),
        Err(DecodeError::WrongCodec { .. })
    ));
    assert!(matches!(
        qsgd.decode_add(&payload, 1.0, &mut mean[1..]),
        Err(DecodeError::OutputLength {
            expected: 408,
            found: 407
        })
    ));
    let mut truncated = workers[0].clone();
    truncated.pop();
    let payload = PayloadRef::parse(&truncated).unwrap();
    assert!(qsgd.decode_add(&payload, 1.0, &mut mean).is_err());
    assert_eq!(mean, before);
}
