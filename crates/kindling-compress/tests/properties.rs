//! Property tests of the wire formats: random shapes round-trip through bytes with the right
//! shape, and decoding arbitrary or mutated bytes returns an error instead of panicking.

use burn::tensor::{Tensor, TensorData};
use kindling_compress::*;
use kindling_testing::device;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// Decodes `bytes` with every codec at ranks 1, 2 and 3; any outcome but a panic is fine. The
/// receiver's limit (4096 entries) stands for a receiver that knows its parameter sizes: a
/// mutated dimension must not make it allocate gigabytes of zeros.
fn decode_everything(bytes: &[u8]) {
    let device = device();
    let Ok(payload) = Payload::from_bytes_with_limit(bytes.to_vec(), 4096) else {
        return;
    };
    macro_rules! all_ranks {
        ($codec:expr) => {{
            let c = $codec;
            let _ = c.decompress::<1>(&payload, &device);
            let _ = c.decompress::<2>(&payload, &device);
            let _ = c.decompress::<3>(&payload, &device);
        }};
    }
    all_ranks!(Identity);
    all_ranks!(Half::default());
    all_ranks!(Sign);
    all_ranks!(ScaledSign);
    all_ranks!(Qsgd::new(3).unwrap());
    all_ranks!(TernGrad::new());
    all_ranks!(TopK::new(Count::Entries(1)).unwrap());
    all_ranks!(RandomK::new(Count::Entries(1)).unwrap());
    all_ranks!(Atomo::new(EntryWise, Budget::Atoms(1.0)).unwrap());
    all_ranks!(Atomo::new(Spectral::full(), Budget::Atoms(1.0)).unwrap());
    all_ranks!(Atomo::new(Fourier, Budget::Atoms(1.0)).unwrap());
}

/// One valid payload of each codec for a small gradient (to mutate).
fn valid_payloads(values: &[f32], seed: u64) -> Vec<Payload> {
    let device = device();
    let g = Tensor::<2>::from_data(
        TensorData::new(values.to_vec(), [2, values.len() / 2]),
        &device,
    );
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    vec![
        Identity.compress(g.clone(), &mut r).unwrap(),
        Half::default().compress(g.clone(), &mut r).unwrap(),
        Sign.compress(g.clone(), &mut r).unwrap(),
        ScaledSign.compress(g.clone(), &mut r).unwrap(),
        Qsgd::new(3).unwrap().compress(g.clone(), &mut r).unwrap(),
        Qsgd::new(1)
            .unwrap()
            .with_coding(LevelCoding::EliasGamma)
            .compress(g.clone(), &mut r)
            .unwrap(),
        TernGrad::new().compress(g.clone(), &mut r).unwrap(),
        TernGrad::new()
            .with_packing(TritPacking::Base3)
            .compress(g.clone(), &mut r)
            .unwrap(),
        TopK::new(Count::Entries(2))
            .unwrap()
            .compress(g.clone(), &mut r)
            .unwrap(),
        RandomK::new(Count::Entries(2))
            .unwrap()
            .compress(g.clone(), &mut r)
            .unwrap(),
        Atomo::new(EntryWise, Budget::Atoms(2.0))
            .unwrap()
            .compress(g.clone(), &mut r)
            .unwrap(),
        Atomo::new(Spectral::full(), Budget::Atoms(1.0))
            .unwrap()
            .compress(g.clone(), &mut r)
            .unwrap(),
        Atomo::new(Fourier, Budget::Atoms(2.0))
            .unwrap()
            .compress(g, &mut r)
            .unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        decode_everything(&bytes);
    }

    #[test]
    fn headers_with_random_bodies_never_panic(
        codec in 1u8..=11,
        flags in 0u8..4,
        dims in proptest::collection::vec(0u32..6, 1..4),
        body in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        let mut bytes = vec![codec, FORMAT_VERSION, flags, 0, dims.len() as u8];
        for d in &dims {
            bytes.extend_from_slice(&d.to_le_bytes());
        }
        bytes.extend_from_slice(&body);
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_payloads_never_panic(
        values in proptest::collection::vec(-10.0f32..10.0, 8),
        seed in any::<u64>(),
        position in any::<usize>(),
        byte in any::<u8>(),
        cut in any::<usize>(),
    ) {
        for payload in valid_payloads(&values, seed) {
            let mut bytes = payload.into_bytes();
            let i = position % bytes.len();
            bytes[i] = byte;
            decode_everything(&bytes);
            bytes.truncate(cut % (bytes.len() + 1));
            decode_everything(&bytes);
        }
    }

    #[test]
    fn round_trips_keep_the_shape(
        rows in 1usize..6,
        cols in 1usize..9,
        seed in any::<u64>(),
    ) {
        let device = device();
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37 + seed as f32).sin()).collect();
        let g = Tensor::<2>::from_data(TensorData::new(values.clone(), [rows, cols]), &device);
        let mut qsgd = Qsgd::new(4).unwrap();
        let p = Payload::from_bytes(qsgd.compress(g.clone(), &mut r).unwrap().into_bytes()).unwrap();
        prop_assert_eq!(qsgd.decompress::<2>(&p, &device).unwrap().dims(), [rows, cols]);
        prop_assert_eq!(p.header().shape.clone(), vec![rows, cols]);
        let mut atomo = Atomo::new(Spectral::full(), Budget::Fraction(0.5)).unwrap();
        let p = atomo.compress(g.clone(), &mut r).unwrap();
        prop_assert_eq!(atomo.decompress::<2>(&p, &device).unwrap().dims(), [rows, cols]);
        let identity: Tensor<2> = Identity.decompress(&Identity.compress(g, &mut r).unwrap(), &device).unwrap();
        prop_assert_eq!(kindling_testing::to_vec(&identity), values);
    }
}
