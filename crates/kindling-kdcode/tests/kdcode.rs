//! KD codes against the paper's invariants: exact one-hot forward with softmax gradients, Gumbel
//! sampling frequencies, the compact form, the size arithmetic, and codes that reflect latent
//! structure.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use kindling_kdcode::relax::*;
use kindling_kdcode::*;
use kindling_testing::{autodiff_device, device, to_vec};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// The straight-through forward is exactly one-hot, and its gradient is the softmax Jacobian-
/// vector product `(p ⊙ w − p·(p·w))/τ` for an upstream gradient `w`.
#[test]
fn straight_through_is_one_hot_with_softmax_gradient() {
    let device = autodiff_device();
    let z = [0.3_f32, -1.0, 2.0, 0.5];
    let w = [1.0_f32, -2.0, 0.5, 3.0];
    let tau = 0.7;
    let logits =
        Tensor::<2>::from_data(TensorData::new(z.to_vec(), [1, 4]), &device).require_grad();
    let y = straight_through(logits.clone(), tau);
    assert_eq!(to_vec(&y.clone().inner()), vec![0.0, 0.0, 1.0, 0.0]);
    let weights = Tensor::<2>::from_data(TensorData::new(w.to_vec(), [1, 4]), &device);
    let grads = (y * weights).sum().backward();
    let g = to_vec(&logits.grad(&grads).unwrap());
    let m = z.iter().map(|v| v / tau).fold(f32::MIN, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v / tau - m).exp()).collect();
    let p: Vec<f32> = e.iter().map(|v| v / e.iter().sum::<f32>()).collect();
    let pw: f32 = p.iter().zip(&w).map(|(a, b)| a * b).sum();
    let expected: Vec<f32> = p
        .iter()
        .zip(&w)
        .map(|(pi, wi)| pi * (wi - pw) / tau)
        .collect();
    kindling_testing::assert_slices_close(&g, &expected, 1e-5);
}

/// argmax(log_softmax(z) + Gumbel noise) draws option k with probability softmax(z)_k: 20 000
/// seeded draws, Pearson's χ² against the softmax frequencies below the 0.999 quantile of χ²
/// with 4 degrees of freedom (18.47).
#[test]
fn gumbel_argmax_frequencies_match_softmax() {
    let device = device();
    let z = [1.0_f32, 0.0, -0.5, 2.0, 0.3];
    let n = 20_000;
    let logits =
        Tensor::<2>::from_data(TensorData::new(z.to_vec(), [1, 5]), &device).repeat_dim(0, n);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let noise = gumbel_noise([n, 5], &mut rng, &device);
    let samples = gumbel_straight_through(logits, 1.0, noise);
    let counts = to_vec(&samples.sum_dim(0));
    let e: Vec<f64> = z.iter().map(|v| (*v as f64).exp()).collect();
    let total: f64 = e.iter().sum();
    let chi2: f64 = counts
        .iter()
        .zip(&e)
        .map(|(c, ek)| {
            let expected = n as f64 * ek / total;
            (*c as f64 - expected).powi(2) / expected
        })
        .sum();
    assert_eq!(counts.iter().sum::<f32>() as usize, n, "one-hot rows");
    assert!(chi2 < 18.47, "χ² = {chi2} for counts {counts:?}");
}

/// The compact form reproduces the training module's embeddings (argmax codes), for linear and
/// recurrent composition, shared tables and batch norm; and survives a save/load round trip.
#[test]
fn compact_equals_the_training_module() {
    let device = device();
    for config in [
        KdEmbeddingConfig::new(50, 12)
            .with_choices(5)
            .with_code_length(6)
            .with_d_code(8),
        KdEmbeddingConfig::new(50, 8)
            .with_choices(16)
            .with_code_length(4)
            .with_d_code(8)
            .with_shared_tables(true),
        KdEmbeddingConfig::new(50, 10)
            .with_choices(7)
            .with_code_length(5)
            .with_composition(Composition::Recurrent { hidden: 6 })
            .with_batch_norm(true),
    ] {
        let trained = config.init_with_seed(3, &device);
        let compact = CompactKdEmbedding::from_trained(&trained);
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new((0..50i64).collect(), [5, 10]), &device);
        kindling_testing::assert_tensors_close(
            &compact.forward(ids.clone()),
            &trained.forward(ids.clone()),
            1e-5,
        );
        // Unpacked codes equal the argmax codes.
        let codes: Vec<i64> = compact
            .codes_of(Tensor::arange(0..50, &device))
            .try_into_vec_as()
            .unwrap();
        let expected: Vec<i64> = trained
            .codes()
            .iter()
            .flatten()
            .map(|&c| c as i64)
            .collect();
        assert_eq!(codes, expected);
        // Save → load into an empty compact embedding → same outputs.
        use burn::store::{BurnpackStore, ModuleSnapshot};
        let dir = std::env::temp_dir().join(format!("kindling-kd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("compact.bpk");
        compact
            .save_into(&mut BurnpackStore::from_file(&path))
            .unwrap();
        let mut loaded = CompactKdEmbedding::empty(&config, &device);
        loaded
            .load_from(&mut BurnpackStore::from_file(&path))
            .unwrap();
        kindling_testing::assert_tensors_close(
            &loaded.forward(ids.clone()),
            &trained.forward(ids),
            1e-5,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The spec's arithmetic: V = 10 000, d = 200 is a 64 Mbit table; K = D = 32 codes are 1.6 Mbit;
/// tables and composition are counted exactly.
#[test]
fn size_report_arithmetic() {
    let device = device();
    let config = KdEmbeddingConfig::new(10_000, 200)
        .with_choices(32)
        .with_code_length(32)
        .with_d_code(32);
    let report = CompactKdEmbedding::from_trained(&config.init_with_seed(0, &device)).size_report();
    assert_eq!(report.full_table_bits, 10_000 * 200 * 32);
    assert_eq!(report.code_bits, 10_000 * 32 * 5);
    // 5-bit codes pack 6 to a word: ⌈320 000 / 6⌉ words.
    assert_eq!(report.stored_code_bits, 320_000u64.div_ceil(6) * 32);
    assert_eq!(report.table_bits, 32 * 32 * 32 * 32);
    assert_eq!(
        report.composition_bits,
        (32 * 200 + 200) * 32,
        "the linear map 32 → 200"
    );
    assert_eq!(
        report.total_bits,
        report.stored_code_bits + report.table_bits + report.composition_bits
    );
    assert!(report.ratio() > 15.0, "{report}");
    let exact = KdEmbeddingConfig::new(1000, 64)
        .with_choices(16)
        .with_code_length(8)
        .with_d_code(64);
    let r = CompactKdEmbedding::from_trained(&exact.init_with_seed(0, &device)).size_report();
    assert_eq!(r.code_bits, r.stored_code_bits, "4-bit codes pack exactly");
    assert_eq!(r.composition_bits, 0, "d' = d: no linear map");
}

#[test]
fn invalid_configs_are_named() {
    let err = KdEmbeddingConfig::new(10, 4)
        .with_choices(1)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("choices"), "{err}");
    let err = KdEmbeddingConfig::new(10, 4)
        .with_temperature_decay(1.5)
        .validate()
        .unwrap_err();
    assert!(matches!(
        err,
        KdError::InvalidField {
            field: "temperature_decay",
            ..
        }
    ));
    let mut e = KdEmbeddingConfig::new(10, 4)
        .with_temperature(1.0)
        .with_temperature_decay(0.5)
        .with_min_temperature(0.3)
        .init_with_seed(0, &device());
    e.decay_temperature();
    e.decay_temperature();
    assert_eq!(e.temperature, 0.3);
}

/// Codes learned by distillation from a clustered table (8 clusters of 8 symbols: centroid plus
/// small noise) put same-cluster symbols closer — in Hamming distance between codes — than
/// symbols of different clusters.
#[test]
fn distilled_codes_reflect_clusters() {
    let device = autodiff_device();
    let (clusters, per, d) = (8, 8, 16);
    let v = clusters * per;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let centroids = gumbel_noise([clusters, d], &mut rng, &device.clone().inner());
    let noise = gumbel_noise([v, d], &mut rng, &device.clone().inner()).mul_scalar(0.05);
    let cluster_of: Vec<i64> = (0..v as i64).map(|i| i / per as i64).collect();
    let table = centroids.select(
        0,
        Tensor::from_data(TensorData::new(cluster_of, [v]), &device.clone().inner()),
    ) + noise;
    let table = table.to_device(&device);
    let mut embedding = KdEmbeddingConfig::new(v, d)
        .with_choices(4)
        .with_code_length(6)
        .with_d_code(16)
        .init_with_seed(1, &device);
    let mut optim = mixed_optimizer(0.1);
    let ids = Tensor::<1, Int>::arange(0..v as i64, &device);
    let first = distillation_loss(&embedding, ids.clone(), &table, 1.0).into_scalar::<f32>();
    for _ in 0..300 {
        let loss = distillation_loss(&embedding, ids.clone(), &table, 1.0);
        let grads = GradientsParams::from_grads(loss.backward(), &embedding);
        embedding = optim.step(0.1, embedding, grads);
    }
    let last = distillation_loss(&embedding, ids, &table, 1.0).into_scalar::<f32>();
    let codes = embedding.codes();
    let hamming =
        |a: &Vec<u32>, b: &Vec<u32>| a.iter().zip(b).filter(|(x, y)| x != y).count() as f64;
    let (mut within, mut between, mut nw, mut nb) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..v {
        for j in i + 1..v {
            if i / per == j / per {
                within += hamming(&codes[i], &codes[j]);
                nw += 1.0;
            } else {
                between += hamming(&codes[i], &codes[j]);
                nb += 1.0;
            }
        }
    }
    let (within, between) = (within / nw, between / nb);
    eprintln!(
        "distillation loss {first:.3} → {last:.3}; mean code Hamming distance within clusters {within:.2}, between {between:.2}"
    );
    assert!(last < 0.5 * first);
    assert!(
        within < 0.7 * between,
        "within {within} vs between {between}"
    );
    let _ = embedding.num_params();
}

/// `init(&device)` draws from the device's generator like burn's `EmbeddingConfig::init` (two
/// calls differ); `init_with_seed` is a pure function of the seed.
#[test]
fn init_draws_from_the_device_and_init_with_seed_is_reproducible() {
    let device = device();
    let config = KdEmbeddingConfig::new(50, 8)
        .with_choices(4)
        .with_code_length(3);
    let logits = |e: &KdEmbedding| to_vec(&e.code_logits.val());
    assert_ne!(logits(&config.init(&device)), logits(&config.init(&device)));
    assert_eq!(
        logits(&config.init_with_seed(4, &device)),
        logits(&config.init_with_seed(4, &device))
    );
    assert!(
        KdEmbeddingConfig::new(0, 8).try_init(&device).is_err(),
        "validated like try_init_with_seed"
    );
}
