use burn::tensor::Tensor;

/// Reads a float tensor back to the host as `f32` values (row-major).
///
/// # Panics
/// When the backend fails to read the tensor.
pub fn to_vec<const D: usize>(tensor: &Tensor<D>) -> Vec<f32> {
    tensor
        .try_to_vec_as::<f32>()
        .expect("reading a float tensor back as f32")
}

/// The first index where `actual` and `expected` differ by more than `tol · max(1, |expected|)`
/// (a mixed absolute/relative bound), or `None` when all entries agree. NaN never agrees.
pub fn first_mismatch(actual: &[f32], expected: &[f32], tol: f64) -> Option<usize> {
    actual.iter().zip(expected).position(|(&a, &e)| {
        let (a, e) = (a as f64, e as f64);
        let bound = tol * e.abs().max(1.0);
        (a - e).abs().is_nan() || (a - e).abs() > bound
    })
}

/// Asserts two slices agree entry-wise within `tol · max(1, |expected|)`; on failure prints both
/// in full (or the first 64 entries and the mismatch) and the first offending index.
///
/// # Panics
/// When the lengths differ or an entry is out of tolerance.
#[track_caller]
pub fn assert_slices_close(actual: &[f32], expected: &[f32], tol: f64) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "length mismatch: actual has {} entries, expected {}\n  actual:   {}\n  expected: {}",
        actual.len(),
        expected.len(),
        preview(actual),
        preview(expected)
    );
    if let Some(i) = first_mismatch(actual, expected, tol) {
        panic!(
            "entry {i} differs: actual {} vs expected {} (tolerance {tol:e} · max(1, |expected|))\n  \
             actual:   {}\n  expected: {}",
            actual[i],
            expected[i],
            preview(actual),
            preview(expected)
        );
    }
}

/// Asserts a tensor holds `expected` (row-major) within `tol · max(1, |expected|)`, printing
/// both on failure.
///
/// # Panics
/// When the tensor cannot be read or an entry is out of tolerance.
#[track_caller]
pub fn assert_tensor_close<const D: usize>(actual: &Tensor<D>, expected: &[f32], tol: f64) {
    assert_slices_close(&to_vec(actual), expected, tol);
}

/// Asserts two tensors of the same shape are close (see [`assert_tensor_close`]).
///
/// # Panics
/// When the shapes differ or an entry is out of tolerance.
#[track_caller]
pub fn assert_tensors_close<const D: usize>(actual: &Tensor<D>, expected: &Tensor<D>, tol: f64) {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    assert_slices_close(&to_vec(actual), &to_vec(expected), tol);
}

fn preview(values: &[f32]) -> String {
    const SHOWN: usize = 64;
    if values.len() <= SHOWN {
        format!("{values:?}")
    } else {
        format!("{:?} … ({} entries)", &values[..SHOWN], values.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device;

    #[test]
    fn close_tensors_pass() {
        let t = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device());
        assert_tensor_close(&t, &[1.0, 2.0, 3.0, 4.0 + 1e-7], 1e-6);
    }

    #[test]
    fn mismatch_reports_the_index_and_both_values() {
        let t = Tensor::<1>::from_floats([1.0, 2.5], &device());
        let err = std::panic::catch_unwind(|| assert_tensor_close(&t, &[1.0, 2.0], 1e-3))
            .expect_err("2.5 vs 2.0 must fail");
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("entry 1 differs"), "{msg}");
        assert!(msg.contains("actual:   [1.0, 2.5]"), "{msg}");
        assert!(msg.contains("expected: [1.0, 2.0]"), "{msg}");
    }

    #[test]
    fn tolerance_is_relative_for_large_values() {
        assert_eq!(first_mismatch(&[1000.5], &[1000.0], 1e-3), None);
        assert_eq!(first_mismatch(&[1.5], &[1.0], 1e-3), Some(0));
        assert_eq!(first_mismatch(&[f32::NAN], &[1.0], 1.0), Some(0));
    }
}
