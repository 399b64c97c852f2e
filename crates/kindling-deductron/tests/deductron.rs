//! The Deductron against the paper: golden losses of the exact weights, the generator against
//! the reference samples, the long-memory claim, and both trainings.

use std::ops::ControlFlow;

use burn::optim::AdamConfig;
use kindling_deductron::wlang::{self, Drawing};
use kindling_deductron::*;
use kindling_testing::{autodiff_device, device};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// Golden values (the reference implementation, 4 decimals): SSE 0.0008 / 0.0019 / 0.1637 /
/// 0.1724 on tiny / small / large / combined, and 0 classification errors on every sample.
#[test]
fn exact_weights_reproduce_the_reference_losses() {
    let device = device();
    let net = Deductron::exact(&device);
    for (sample, golden) in [
        (wlang::tiny(), 0.0008),
        (wlang::small(), 0.0019),
        (wlang::large(), 0.1637),
        (wlang::combined(), 0.1724),
    ] {
        let x = sample.inputs(&device);
        let t = sample.targets(&device);
        let sse = net.sse(x.clone(), t.clone()).into_scalar::<f64>();
        assert!(
            (sse - golden).abs() < 5e-5,
            "{}: SSE {sse:.5} vs {golden}",
            sample.string
        );
        let out = net.forward(x);
        assert_eq!(wlang::errors(&out.y, &t), 0, "{}", sample.string);
    }
}

#[test]
fn exact_weights_decode_the_reference_strings() {
    let device = device();
    let net = Deductron::exact(&device);
    for sample in [
        wlang::tiny(),
        wlang::small(),
        wlang::large(),
        wlang::combined(),
    ] {
        let out = net.forward(sample.inputs(&device));
        assert_eq!(wlang::decode(&out.y), vec![sample.string.clone()]);
        assert_eq!(out.z.dims(), [1, sample.len(), 4]);
    }
}

/// The drawing rule inferred from `small.image` reproduces the reference samples exactly:
/// `small` from "XOOXXO" with unit stretching, and `tiny` from "XO" with a blank at the jump.
#[test]
fn generator_reproduces_the_reference_samples() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(
        wlang::generate("XOOXXO", Drawing::default(), &mut rng).unwrap(),
        wlang::small()
    );
    let blank = Drawing {
        max_stretch: 1,
        blank_jumps: true,
    };
    let tiny = wlang::generate("XO", blank, &mut rng).unwrap();
    assert_eq!(tiny.inputs, wlang::tiny().inputs);
    assert_eq!(tiny.targets, wlang::tiny().targets);
    assert!(matches!(
        wlang::generate("XOZ", Drawing::default(), &mut rng),
        Err(DeductronError::NotInAlphabet {
            character: 'Z',
            position: 2
        })
    ));
}

/// The long-memory claim: random strings of length up to 200, drawn with random stretching,
/// decode back to themselves with the exact weights (one batch per length class).
#[test]
fn exact_weights_decode_long_random_strings() {
    let device = device();
    let net = Deductron::exact(&device);
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for (len, stretch) in [(10, 1), (50, 3), (200, 4)] {
        for _ in 0..3 {
            let text: String = (0..len)
                .map(|_| {
                    if rand::RngExt::random_bool(&mut rng, 0.5) {
                        'X'
                    } else {
                        'O'
                    }
                })
                .collect();
            let drawing = Drawing {
                max_stretch: stretch,
                blank_jumps: false,
            };
            let sample = wlang::generate(&text, drawing, &mut rng).unwrap();
            let out = net.forward(sample.inputs(&device));
            assert_eq!(
                wlang::decode(&out.y),
                vec![text.clone()],
                "length {len}, stretch {stretch}"
            );
            assert_eq!(wlang::errors(&out.y, &sample.targets(&device)), 0);
        }
    }
}

#[test]
fn batched_forward_equals_single_sequences() {
    let device = device();
    let net = DeductronConfig::new().init_with_seed(3, &device);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a = wlang::generate("XXOO", Drawing::default(), &mut rng).unwrap();
    let b = wlang::generate("OOXX", Drawing::default(), &mut rng).unwrap();
    assert_eq!(a.len(), b.len());
    let batch = burn::tensor::Tensor::cat(vec![a.inputs(&device), b.inputs(&device)], 0);
    let out = net.forward(batch);
    let single = net.forward(b.inputs(&device));
    let second = out.y.slice([1..2, 0..b.len(), 0..2]);
    kindling_testing::assert_tensors_close(&second, &single.y, 1e-6);
}

#[test]
fn invalid_configs_are_named() {
    let err = DeductronConfig::new()
        .with_n_memory(0)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("n_memory"), "{err}");
    let err = DeductronConfig::new()
        .with_beta(-1.0)
        .try_init_with_seed(0, &device())
        .unwrap_err();
    assert!(matches!(
        err,
        DeductronError::InvalidField { field: "beta", .. }
    ));
    let err = Annealer {
        beta_step: 0.0,
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(matches!(
        err,
        DeductronError::InvalidField {
            field: "beta_step",
            ..
        }
    ));
}

/// Weights survive burn's record API: save to bytes, load into a fresh module, same outputs.
#[test]
fn weights_round_trip_through_burn_records() {
    use burn::module::Module;
    use burn::store::{BurnpackStore, ModuleSnapshot};
    let device = device();
    let net = Deductron::exact(&device);
    let dir = std::env::temp_dir().join(format!("kindling-deductron-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("exact.bpk");
    let mut store = BurnpackStore::from_file(&path);
    net.save_into(&mut store).unwrap();
    let mut fresh = DeductronConfig::new().init_with_seed(9, &device);
    let mut store = BurnpackStore::from_file(&path);
    fresh.load_from(&mut store).unwrap();
    let x = wlang::small().inputs(&device);
    kindling_testing::assert_tensors_close(&fresh.forward(x.clone()).y, &net.forward(x).y, 1e-6);
    let _ = net.num_params();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Gradient training with the authors' recipe (β = 1, shift 0, Glorot init, Adam lr 0.01,
/// m = 3, until SSE < 0.1, L2 1e-4 / 1e-5) reaches zero errors on `small` on every seed tried
/// (2 here, in 3 915 and 5 599 steps; the example solves 8 of 8).
#[test]
fn gradient_training_learns_small() {
    let device = autodiff_device();
    let sample = wlang::small();
    let recipe = GradientTraining::default();
    for seed in 0..2 {
        let model = recipe.config(3).init_with_seed(seed, &device);
        assert_eq!((model.beta, model.shift), (1.0, 0.0));
        let mut optim = AdamConfig::new().init();
        let (_, last) = train_gradient(model, &mut optim, &sample, recipe, |_| {
            ControlFlow::Continue(())
        });
        eprintln!(
            "seed {seed}: {} steps, SSE {:.4}, {} errors",
            last.step, last.sse, last.errors
        );
        assert_eq!(last.errors, 0, "seed {seed}");
        assert!(last.sse < 0.1);
    }
}

/// The authors' recipe for the combined data (β = 1, Glorot init, Adam lr 1e-3, m = 4) reaches
/// zero errors on all 547 frames within 45 000 steps (seed 1: at step 21 652; the example solves
/// 3 of 4 seeds within 60 000). The earlier recipe (β = 10, lr 0.01) solved 0 of 4 seeds with
/// m = 3.
///
/// This test measures what 21 000 steps reach, which does not depend on the backend (the
/// gradients are computed on the host either way), so it trains on Flex whatever
/// `KINDLING_TEST_DEVICE` selects: on a software Vulkan driver each optimizer step's tiny
/// kernels and read-back cost milliseconds. `gradient_training_learns_small` runs on every
/// backend.
#[test]
fn gradient_training_decodes_the_combined_data() {
    let device = burn::tensor::Device::flex().autodiff();
    let sample = wlang::combined();
    let recipe = GradientTraining {
        max_steps: 45_000,
        ..GradientTraining::combined()
    };
    let model = recipe.config(4).init_with_seed(1, &device);
    let mut optim = AdamConfig::new().init();
    let (_, last) = train_gradient(model, &mut optim, &sample, recipe, |p| {
        if p.errors == 0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    eprintln!(
        "combined, m = 4: {} steps, SSE {:.4}, {} errors",
        last.step, last.sse, last.errors
    );
    assert_eq!(last.errors, 0);
}

/// kindling's optimizers plug into the same training: Signum (lr 0.003) learns `small` too.
/// (M-SVAG does not on this full-batch problem: 0 of 4 seeds at lr 0.02–0.1.)
#[test]
fn gradient_training_with_kindling_signum() {
    let device = autodiff_device();
    let recipe = GradientTraining {
        lr: 0.003,
        ..Default::default()
    };
    let model = recipe.config(3).init_with_seed(2, &device);
    let mut optim = kindling_optim::SignumConfig::new().init();
    let (_, last) = train_gradient(model, &mut optim, &wlang::small(), recipe, |_| {
        ControlFlow::Continue(())
    });
    eprintln!(
        "Signum: {} steps, SSE {:.4}, {} errors",
        last.step, last.sse, last.errors
    );
    assert_eq!(last.errors, 0);
}

/// Simulated annealing over quantised weights finds a zero-error decoder of `small` with m = 3.
#[test]
fn annealing_finds_a_zero_error_decoder_of_small() {
    let device = device();
    let result = Annealer::default()
        .run(&wlang::small(), &device, |_| ControlFlow::Continue(()))
        .unwrap();
    eprintln!(
        "annealing: {} iterations, SSE {:.4}, {} errors",
        result.iterations, result.sse, result.errors
    );
    assert_eq!(result.errors, 0);
    let out = result.model.forward(wlang::small().inputs(&device));
    assert_eq!(wlang::decode(&out.y), vec!["XOOXXO".to_string()]);
}

/// Annealing with m = 3 finds a zero-error decoder of the combined data (`small` then `large`,
/// 547 frames) within 200 000 iterations (seed 2: 145 845). The annealer before the authors'
/// proposal and restart rules solved this seed in none of 300 000 (1 of 4 seeds in all).
#[test]
fn annealing_decodes_the_combined_data_with_three_cells() {
    let device = device();
    let sample = wlang::combined();
    let result = Annealer {
        seed: 2,
        max_iterations: 200_000,
        ..Annealer::default()
    }
    .run(&sample, &device, |_| ControlFlow::Continue(()))
    .unwrap();
    eprintln!(
        "annealing on combined: {} iterations, SSE {:.4}, {} errors",
        result.iterations, result.sse, result.errors
    );
    assert_eq!(result.errors, 0);
    assert_eq!(result.model.n_memory(), 3);
    let out = result.model.forward(sample.inputs(&device));
    assert_eq!(wlang::errors(&out.y, &sample.targets(&device)), 0);
}

/// `init(&device)` draws from the device's generator like burn's modules (two calls differ);
/// `init_with_seed` is a pure function of the seed.
#[test]
fn init_draws_from_the_device_and_init_with_seed_is_reproducible() {
    let device = kindling_testing::device();
    let config = DeductronConfig::new().with_n_memory(3);
    let values = |m: &Deductron| kindling_testing::to_vec(&m.w1.val());
    assert_ne!(values(&config.init(&device)), values(&config.init(&device)));
    assert_eq!(
        values(&config.init_with_seed(3, &device)),
        values(&config.init_with_seed(3, &device))
    );
}
