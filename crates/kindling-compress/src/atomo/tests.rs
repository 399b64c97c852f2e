use burn::tensor::{Tensor, TensorData};
use kindling_testing::device;

use super::{probabilities, water_level};

/// The device water-filling (fixed point of `c = (s − #saturated)/Σ_unsaturated|λ|`) gives the
/// same probabilities as the paper's sort-based algorithm, with and without saturation, and
/// when the budget exceeds the non-zero atoms.
#[test]
fn device_water_level_matches_the_sorted_algorithm() {
    let cases: [(&[f32], f64); 5] = [
        (&[4.0, 3.0, 2.0, 1.0], 2.0),
        (&[10.0, 1.0, 1.0, 1.0], 2.0),
        (&[100.0, 50.0, 1.0, 1.0, 1.0, 0.5, 0.0], 3.5),
        (&[1.0, -2.0, 3.0], 5.0),
        (&[0.3, -0.1, 0.0, 0.7, -0.9, 0.2], 1.3),
    ];
    for (lambda, s) in cases {
        let expected = probabilities(lambda, s);
        let abs = Tensor::<1>::from_data(
            TensorData::new(
                lambda.iter().map(|x| x.abs()).collect::<Vec<_>>(),
                [lambda.len()],
            ),
            &device(),
        );
        let c = water_level(&abs, s);
        for (i, &l) in lambda.iter().enumerate() {
            let p = (c * l.abs() as f64).min(1.0);
            let p = if p.is_nan() { 0.0 } else { p };
            assert!(
                (p - expected[i]).abs() < 1e-5,
                "λ = {lambda:?}, s = {s}: {p} vs {}",
                expected[i]
            );
        }
    }
}
