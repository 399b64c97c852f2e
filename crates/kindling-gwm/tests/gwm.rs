//! Picture languages and learning: counts, membership against brute force, and training Bars &
//! Stripes and Shifting Bits to high held-out accuracy.

use std::collections::HashSet;
use std::ops::ControlFlow;

use burn::optim::AdamConfig;
use kindling_gwm::languages::*;
use kindling_gwm::*;

fn all_pictures(h: usize, w: usize) -> Vec<Picture> {
    (0..1usize << (h * w))
        .map(|bits| Picture {
            h,
            w,
            pixels: (0..h * w).map(|k| ((bits >> k) & 1) as u8).collect(),
        })
        .collect()
}

#[test]
fn bars_and_stripes_counts() {
    for ((h, w), count) in [((2, 2), 6), ((3, 3), 14), ((4, 4), 30), ((3, 4), 22)] {
        let members = bars_and_stripes(h, w);
        assert_eq!(members.len(), count, "{h}×{w}");
        let distinct: HashSet<_> = members.iter().collect();
        assert_eq!(distinct.len(), count, "{h}×{w}: duplicates");
    }
}

/// The membership tests agree with the generated member lists on every picture of small sizes.
#[test]
fn membership_matches_brute_force() {
    for (h, w) in [(2, 2), (2, 3), (3, 3), (3, 4)] {
        for language in [
            Language::BarsAndStripes,
            Language::SHIFTING_BITS,
            Language::ShiftingBits { shift: -2 },
        ] {
            let members: HashSet<Picture> = language.members(h, w).into_iter().collect();
            for p in all_pictures(h, w) {
                assert_eq!(
                    language.contains(&p),
                    members.contains(&p),
                    "{language:?} {h}×{w}\n{}",
                    p.render()
                );
            }
        }
    }
    assert_eq!(shifting_bits(3, 4, 1).len(), 16);
}

#[test]
fn datasets_are_balanced_seeded_and_labelled_correctly() {
    let language = Language::BarsAndStripes;
    let a = dataset(language, 4, 4, 2, 50, 3).unwrap();
    let b = dataset(language, 4, 4, 2, 50, 3).unwrap();
    assert_eq!(a.train.pictures, b.train.pictures);
    let positives = a.train.labels.iter().filter(|&&y| y == 1.0).count();
    assert_eq!(positives * 3, a.train.len());
    let train: HashSet<&Picture> = a.train.pictures.iter().collect();
    assert!(
        a.test_uniform
            .pictures
            .iter()
            .chain(&a.test_near_misses.pictures)
            .all(|p| !train.contains(p)),
        "held-out negatives are unseen"
    );
    for (p, &y) in a.train.pictures.iter().zip(&a.train.labels) {
        assert_eq!(language.contains(p), y == 1.0);
    }
    assert!(
        a.test_uniform
            .pictures
            .iter()
            .all(|p| !language.contains(p))
    );
    for p in &a.test_near_misses.pictures {
        assert!(!language.contains(p));
        let members = language.members(4, 4);
        assert!(members.iter().any(|m| {
            m.pixels
                .iter()
                .zip(&p.pixels)
                .filter(|(x, y)| x != y)
                .count()
                == 1
        }));
    }
    assert!(dataset(language, 1, 4, 1, 10, 0).is_err());
}

fn learn(
    language: Language,
    h: usize,
    w: usize,
    bond: usize,
    epochs: usize,
) -> (PictureGwm, Dataset) {
    let device = kindling_testing::autodiff_device();
    let data = dataset(language, h, w, 4, 100, 0).unwrap();
    let model = PictureGwmConfig::new()
        .with_bond(bond)
        .init_with_seed(1, &device);
    let settings = Training {
        epochs,
        ..Training::default()
    };
    let (model, losses) = train(
        model,
        &mut AdamConfig::new().init(),
        &data.train,
        settings,
        |_, _| ControlFlow::Continue(()),
    );
    assert!(losses.last().unwrap() < &losses[0], "{losses:?}");
    (model, data)
}

/// Bars & Stripes 3×3 with bond 3: every member accepted, and held-out pictures of both kinds
/// of negatives rejected (93.0% and 93.8% with this test's seeds: data 0, tensors 1).
#[test]
fn learns_bars_and_stripes_3x3() {
    let (model, data) = learn(Language::BarsAndStripes, 3, 3, 3, 300);
    let objective = Objective::Regression;
    let train_acc = accuracy(&model, &data.train, objective);
    let pos = accuracy(&model, &data.test_positives, objective);
    let uni = accuracy(&model, &data.test_uniform, objective);
    let near = accuracy(&model, &data.test_near_misses, objective);
    eprintln!(
        "B&S 3×3 d=3: train {train_acc:.3}, members {pos:.3}, uniform {uni:.3}, near misses {near:.3}"
    );
    assert!(train_acc == 1.0 && pos == 1.0, "{train_acc} {pos}");
    assert!(uni >= 0.9 && near >= 0.85, "{uni} {near}");
}

/// Size transfer. Trained on 3×3, 3×4 and 4×3 pictures at once (`train_sizes`) with the padded
/// encoding (one interior tensor per symbol, four boundary vectors), bond 3, the model reads
/// 5×5 pictures it never saw: it accepts ≥ 95% of the members and ranks them above held-out
/// negatives with AUC ≥ 0.95 (seed 0: 100% and 1.000; the example's table has 4 seeds).
/// Trained at 3×3 alone with position-typed tensors — where each type occurs once, so tying is
/// never exercised — the same evaluation ranks at chance (AUC 0.46).
///
/// This test measures what 900 training steps reach, which does not depend on the backend, so
/// it trains on Flex whatever `KINDLING_TEST_DEVICE` selects: on a software Vulkan driver the
/// steps' thousands of tiny kernels cost minutes. The contraction and its gradients are checked
/// on every backend by the other tests.
#[test]
fn multi_size_training_transfers_to_larger_pictures() {
    let device = burn::tensor::Device::flex().autodiff();
    let language = Language::BarsAndStripes;
    let sets: Vec<PictureSet> = [(3, 3), (3, 4), (4, 3)]
        .iter()
        .map(|&(h, w)| dataset(language, h, w, 4, 200, 0).unwrap().train)
        .collect();
    let model = PictureGwmConfig::new()
        .with_bond(3)
        .with_boundary(BoundaryEncoding::Vectors)
        .init_with_seed(0, &device);
    let (model, _) = train_sizes(
        model,
        &mut AdamConfig::new().init(),
        &sets,
        Training::default(),
        |_, _| ControlFlow::Continue(()),
    );
    let eval = dataset(language, 5, 5, 1, 200, 1).unwrap();
    let mut negatives = eval.test_uniform.clone();
    negatives
        .pictures
        .extend(eval.test_near_misses.pictures.iter().cloned());
    negatives.labels.extend(&eval.test_near_misses.labels);
    let members = accuracy(&model, &eval.test_positives, Objective::Regression);
    let rejected = accuracy(&model, &negatives, Objective::Regression);
    let area = auc(&model, &eval.test_positives, &negatives);
    eprintln!("5×5: members {members:.3}, negatives rejected {rejected:.3}, AUC {area:.3}");
    assert!(members >= 0.95, "{members}");
    assert!(area >= 0.95, "{area}");
    assert!(rejected >= 0.9, "{rejected}");
}

/// The AUC is the Mann–Whitney statistic: a set against itself is 0.5 exactly (all ties), and
/// swapping the roles of the two sets gives 1 − AUC.
#[test]
fn auc_is_the_rank_statistic() {
    let device = kindling_testing::device();
    let data = dataset(Language::BarsAndStripes, 3, 3, 2, 20, 0).unwrap();
    let model = PictureGwmConfig::new()
        .with_bond(2)
        .init_with_seed(5, &device);
    let same = auc(&model, &data.test_positives, &data.test_positives);
    assert_eq!(same, 0.5);
    let a = auc(&model, &data.test_positives, &data.test_uniform);
    let b = auc(&model, &data.test_uniform, &data.test_positives);
    assert!((a + b - 1.0).abs() < 1e-12, "{a} + {b}");
    let empty = PictureSet {
        pictures: vec![],
        labels: vec![],
    };
    assert!(auc(&model, &empty, &data.test_uniform).is_nan());
}

/// `init(&device)` draws from the device's generator like burn's modules (two calls differ);
/// `init_with_seed` is a pure function of the seed.
#[test]
fn init_draws_from_the_device_and_init_with_seed_is_reproducible() {
    let device = kindling_testing::device();
    let config = PictureGwmConfig::new().with_bond(2);
    let values = |m: &PictureGwm| kindling_testing::to_vec(&m.tensors[0].val());
    assert_ne!(values(&config.init(&device)), values(&config.init(&device)));
    assert_eq!(
        values(&config.init_with_seed(3, &device)),
        values(&config.init_with_seed(3, &device))
    );
}
