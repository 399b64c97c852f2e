//! Property tests of the wire formats: random shapes round-trip through bytes with the right
//! shape, and decoding arbitrary or mutated bytes — any header, any dimensions — returns an error
//! or finite values, never panics, and never allocates more than the bytes justify.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use burn::tensor::{Tensor, TensorData};
use kindling_compress::*;
use kindling_testing::device;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// The system allocator, recording the largest single allocation made on each thread.
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping touches
// only a thread-local `Cell` (const-initialised, so it never allocates).
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// What a decoder may allocate at once for `len` bytes of input: a dense f32 output of
/// `ENTRIES_PER_BYTE` entries per byte, twice over for intermediates and index tensors, plus a
/// fixed 1 MiB for the backend's own buffers.
fn ceiling(len: usize) -> usize {
    (1 << 20) + 2 * 4 * ENTRIES_PER_BYTE * len
}

/// Decodes `bytes` as a receiver that knows nothing would (`Payload::from_bytes`, the safe
/// default) with every codec at ranks 1 to 4: each outcome is an error or finite values, and
/// no single allocation exceeds [`ceiling`].
fn decode_everything(bytes: &[u8]) {
    let device = device();
    LARGEST.with(|m| m.set(0));
    let Ok(payload) = Payload::from_bytes(bytes.to_vec()) else {
        return;
    };
    macro_rules! rank {
        ($codec:expr, $d:literal) => {{
            if let Ok(t) = $codec.decompress::<$d>(&payload, &device) {
                let values = kindling_testing::to_vec(&t);
                assert!(
                    values.iter().all(|v| v.is_finite()),
                    "{:?} decoded to non-finite values",
                    payload.header()
                );
            }
        }};
    }
    macro_rules! all_ranks {
        ($codec:expr) => {{
            let c = $codec;
            rank!(c, 1);
            rank!(c, 2);
            rank!(c, 3);
            rank!(c, 4);
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
    // The majority vote over two copies: counted or refused, never a panic or a non-finite value.
    if let Ok(t) = majority_vote::<1>(&[payload.clone(), payload.clone()], &device) {
        assert!(kindling_testing::to_vec(&t).iter().all(|v| v.is_finite()));
    }
    // The borrowed host decoders: validated before anything is written, so a refused payload
    // leaves the caller's accumulator exactly as it was.
    let borrowed = PayloadRef::parse(bytes).expect("parses as Payload::from_bytes did");
    let numel = borrowed.header().numel();
    macro_rules! add {
        ($codec:expr) => {{
            let mut acc = vec![7.0f32; numel];
            match $codec.decode_add(&borrowed, 0.5, &mut acc) {
                Ok(()) => assert!(acc.iter().all(|v| v.is_finite())),
                Err(_) => assert!(acc.iter().all(|&v| v == 7.0), "a refused payload wrote"),
            }
        }};
    }
    add!(Identity);
    add!(Half::default());
    add!(Sign);
    add!(ScaledSign);
    add!(Qsgd::new(3).unwrap());
    add!(TernGrad::new());
    add!(TopK::new(Count::Entries(1)).unwrap());
    add!(RandomK::new(Count::Entries(1)).unwrap());
    add!(Atomo::new(EntryWise, Budget::Atoms(1.0)).unwrap());
    add!(Atomo::new(Spectral::full(), Budget::Atoms(1.0)).unwrap());
    add!(Atomo::new(Fourier, Budget::Atoms(1.0)).unwrap());
    let largest = LARGEST.with(Cell::get);
    assert!(
        largest <= ceiling(bytes.len()),
        "{} input bytes ({:?}) made a {largest}-byte allocation",
        bytes.len(),
        payload.header()
    );
}

/// A header for `codec` over `dims`, then `body`.
fn payload_bytes(codec: u8, flags: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![codec, FORMAT_VERSION, flags, 0, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_le_bytes());
    }
    bytes.extend_from_slice(body);
    bytes
}

/// The hostile inputs found by hand: a 45-byte sparse payload and a 25-byte Fourier one that
/// claimed gigabyte tensors, and a 21-byte shape whose zero dimension hid an overflowing
/// product. Each is refused at the header, before any allocation.
#[test]
fn hostile_headers_are_refused_before_anything_is_allocated() {
    let sparse = payload_bytes(7, 0, &[1 << 14, 1 << 14], &[0; 32]);
    let fourier = payload_bytes(11, 0, &[1 << 31], &[0; 16]);
    let overflow = payload_bytes(1, 0, &[0, u32::MAX, u32::MAX, u32::MAX], &[]);
    for bytes in [sparse, fourier, overflow] {
        assert!(
            matches!(
                Payload::from_bytes(bytes.clone()),
                Err(DecodeError::FieldOutOfRange { field: "shape", .. })
            ),
            "{} bytes accepted",
            bytes.len()
        );
        decode_everything(&bytes);
    }
    // A receiver that expects the big tensor says so, and still gets an error for a short body.
    let sparse = payload_bytes(7, 0, &[1 << 10, 1 << 10], &[0; 32]);
    let p = Payload::from_bytes_with_limit(sparse, 1 << 20).unwrap();
    let device = device();
    assert!(
        TopK::new(Count::Entries(1))
            .unwrap()
            .decompress::<2>(&p, &device)
            .is_err()
    );
}

/// Finite values that overflow when combined: a spectral atom whose coefficient times its
/// vectors exceeds f32, and Fourier coefficients whose inverse transform would. Both are
/// errors, not tensors of ±Inf; so are NaN and ±Inf values in every float field.
#[test]
fn overflowing_or_non_finite_values_are_errors() {
    let device = device();
    let big = 3e38_f32.to_le_bytes();
    let mut atom = Vec::new();
    atom.extend_from_slice(&1u32.to_le_bytes());
    for _ in 0..5 {
        atom.extend_from_slice(&big);
    }
    let spectral = Payload::from_bytes(payload_bytes(10, 0, &[2, 2], &atom)).unwrap();
    let atomo = Atomo::new(Spectral::full(), Budget::Atoms(1.0)).unwrap();
    assert!(atomo.decompress::<2>(&spectral, &device).is_err());
    // A huge coefficient with tiny vectors: the product is small, but the coefficient times
    // either vector (which a decoder may form first) overflows. Refused on both paths.
    let mut atom = Vec::new();
    atom.extend_from_slice(&1u32.to_le_bytes());
    for v in [3e38_f32, 1e-3, 1e-3, 10.0, 10.0] {
        atom.extend_from_slice(&v.to_le_bytes());
    }
    let spectral = Payload::from_bytes(payload_bytes(10, 0, &[2, 2], &atom)).unwrap();
    assert!(atomo.decompress::<2>(&spectral, &device).is_err());
    let mut out = vec![0.0f32; 4];
    assert!(atomo.decode_into(&spectral.borrow(), &mut out).is_err());

    let mut coefficients = Vec::new();
    coefficients.extend_from_slice(&2u32.to_le_bytes());
    coefficients.extend_from_slice(&0u32.to_le_bytes());
    coefficients.extend_from_slice(&1u32.to_le_bytes());
    coefficients.extend_from_slice(&big);
    coefficients.extend_from_slice(&big);
    let fourier = Payload::from_bytes(payload_bytes(11, 0, &[4], &coefficients)).unwrap();
    let atomo = Atomo::new(Fourier, Budget::Atoms(1.0)).unwrap();
    assert!(atomo.decompress::<1>(&fourier, &device).is_err());
    // Every atom of an 8-point signal, all of one sign: an inverse FFT that sums the whole
    // unnormalised Hermitian spectrum first (as wgpu's does) reaches √(2N)·Σ|λ| in between.
    // Accepted just below the bound f32::MAX/(2√N), and then finite on every backend;
    // refused above it.
    for (scale, accepted) in [(0.99, true), (1.5, false)] {
        let each = (f32::MAX as f64 / (2.0 * 8f64.sqrt()) / 8.0 * scale) as f32;
        let mut body = Vec::new();
        body.extend_from_slice(&8u32.to_le_bytes());
        for a in 0..8u32 {
            body.extend_from_slice(&a.to_le_bytes());
        }
        for _ in 0..8 {
            body.extend_from_slice(&each.to_le_bytes());
        }
        let payload = Payload::from_bytes(payload_bytes(11, 0, &[8], &body)).unwrap();
        let decoded = atomo.decompress::<1>(&payload, &device);
        let mut out = vec![0.0f32; 8];
        let on_host = atomo.decode_into(&payload.borrow(), &mut out);
        assert_eq!(decoded.is_ok(), accepted, "scale {scale}");
        assert_eq!(on_host.is_ok(), accepted, "scale {scale}");
        if let Ok(t) = decoded {
            assert!(kindling_testing::to_vec(&t).iter().all(|v| v.is_finite()));
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }

    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut body = Vec::new();
        body.extend_from_slice(&1.0f32.to_le_bytes());
        body.extend_from_slice(&bad.to_le_bytes());
        let identity = Payload::from_bytes(payload_bytes(1, 0, &[2], &body)).unwrap();
        assert!(
            Identity.decompress::<1>(&identity, &device).is_err(),
            "{bad}"
        );
    }
    for bits in [0x7e00u16, 0x7c00, 0xfc00] {
        let half = Payload::from_bytes(payload_bytes(2, 0, &[1], &bits.to_le_bytes())).unwrap();
        assert!(
            Half::default().decompress::<1>(&half, &device).is_err(),
            "{bits:#x}"
        );
    }
    // A scale or norm must also be ≥ 0: a negative one would flip every decoded sign.
    let mut scaled = (-1.0f32).to_le_bytes().to_vec();
    scaled.push(0b1);
    let p = Payload::from_bytes(payload_bytes(4, 0, &[1], &scaled)).unwrap();
    assert!(ScaledSign.decompress::<1>(&p, &device).is_err());
    let mut tern = (-1.0f32).to_le_bytes().to_vec();
    tern.push(0b01);
    let p = Payload::from_bytes(payload_bytes(6, 0, &[1], &tern)).unwrap();
    assert!(TernGrad::new().decompress::<1>(&p, &device).is_err());
    let mut random_k = Vec::new();
    random_k.extend_from_slice(&1u32.to_le_bytes());
    random_k.extend_from_slice(&0u64.to_le_bytes());
    random_k.extend_from_slice(&f32::NAN.to_le_bytes());
    let p = Payload::from_bytes(payload_bytes(8, 0, &[4], &random_k)).unwrap();
    assert!(
        RandomK::new(Count::Entries(1))
            .unwrap()
            .decompress::<1>(&p, &device)
            .is_err()
    );
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

// A fixed seed keeps CI deterministic; every failure random seeds found (a Fourier payload
// that wgpu's inverse FFT overflowed, a spectral atom pairing a huge coefficient with tiny
// vectors) is pinned by a test above or in `properties.proptest-regressions`.
proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6B69_6E64_6C69_6E67),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        decode_everything(&bytes);
    }

    /// Unrestricted shapes: any rank up to 8, dimensions anywhere in `u32` (mostly small, often
    /// zero, sometimes huge), any codec and flags, any body.
    #[test]
    fn headers_with_random_bodies_never_panic(
        codec in 1u8..=11,
        flags in 0u8..4,
        dims in proptest::collection::vec(
            prop_oneof![0u32..6, Just(0u32), any::<u32>(), Just(u32::MAX)],
            1..=8,
        ),
        body in proptest::collection::vec(any::<u8>(), 0..160),
    ) {
        decode_everything(&payload_bytes(codec, flags, &dims, &body));
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
