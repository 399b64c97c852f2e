use std::fmt;
use std::sync::OnceLock;

use burn::tensor::Device;

/// The environment variable that picks the test backend (`flex` or `wgpu`).
pub const TEST_DEVICE_VAR: &str = "KINDLING_TEST_DEVICE";
/// burn's own backend override, read when [`TEST_DEVICE_VAR`] is unset.
pub const BURN_DEVICE_VAR: &str = "BURN_DEVICE";

/// A backend the test suite can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    /// burn's Flex backend: pure-Rust CPU, always compiled in.
    Flex,
    /// burn's wgpu backend (Vulkan, Metal, DX12 or WebGPU), behind this crate's `wgpu` feature.
    Wgpu,
}

impl TestBackend {
    /// The name used in the environment variables.
    pub fn name(self) -> &'static str {
        match self {
            TestBackend::Flex => "flex",
            TestBackend::Wgpu => "wgpu",
        }
    }

    /// Whether this backend was compiled into the current build.
    pub fn is_compiled(self) -> bool {
        match self {
            TestBackend::Flex => true,
            TestBackend::Wgpu => cfg!(feature = "wgpu"),
        }
    }
}

impl fmt::Display for TestBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why no test device could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceSelectionError {
    /// The variable names no backend this crate knows.
    #[error("{var}={value:?} names no known test backend; use `flex` or `wgpu`")]
    Unknown {
        /// The variable that was read.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The backend is known but its cargo feature is off in this build.
    #[error(
        "{var}={backend} asks for the {backend} backend, but it is not compiled in: \
         rebuild with `--features kindling-testing/{backend}`"
    )]
    NotCompiled {
        /// The variable that was read.
        var: &'static str,
        /// The backend it named.
        backend: TestBackend,
    },
    /// `KINDLING_TEST_DEVICE` and `BURN_DEVICE` disagree, so burn paths that call
    /// `Device::default()` would run on another backend than the tests.
    #[error(
        "KINDLING_TEST_DEVICE={ours} but BURN_DEVICE={burns}: set both to the same backend \
         (or unset BURN_DEVICE)"
    )]
    Conflict {
        /// The backend `KINDLING_TEST_DEVICE` names.
        ours: TestBackend,
        /// What `BURN_DEVICE` says.
        burns: String,
    },
}

/// Parses a backend name as the environment variables spell it (case-insensitive).
pub fn parse_backend(var: &'static str, value: &str) -> Result<TestBackend, DeviceSelectionError> {
    let backend = match value.trim().to_ascii_lowercase().as_str() {
        "flex" => TestBackend::Flex,
        "wgpu" => TestBackend::Wgpu,
        _ => {
            return Err(DeviceSelectionError::Unknown {
                var,
                value: value.to_string(),
            });
        }
    };
    if !backend.is_compiled() {
        return Err(DeviceSelectionError::NotCompiled { var, backend });
    }
    Ok(backend)
}

/// Chooses the backend from the two variables' values (`None` = unset).
///
/// `KINDLING_TEST_DEVICE` wins; otherwise `BURN_DEVICE`; otherwise Flex. When both are set they
/// must agree.
pub fn select_backend(
    kindling: Option<&str>,
    burn: Option<&str>,
) -> Result<TestBackend, DeviceSelectionError> {
    match (kindling, burn) {
        (Some(ours), Some(burns)) => {
            let ours = parse_backend(TEST_DEVICE_VAR, ours)?;
            if burns.trim().eq_ignore_ascii_case(ours.name()) {
                Ok(ours)
            } else {
                Err(DeviceSelectionError::Conflict {
                    ours,
                    burns: burns.to_string(),
                })
            }
        }
        (Some(ours), None) => parse_backend(TEST_DEVICE_VAR, ours),
        (None, Some(burns)) => parse_backend(BURN_DEVICE_VAR, burns),
        (None, None) => Ok(TestBackend::Flex),
    }
}

/// The backend selected by the environment of this process (read once).
pub fn try_backend() -> Result<TestBackend, DeviceSelectionError> {
    static CHOICE: OnceLock<Result<TestBackend, DeviceSelectionError>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let ours = std::env::var(TEST_DEVICE_VAR).ok();
            let burns = std::env::var(BURN_DEVICE_VAR).ok();
            select_backend(ours.as_deref(), burns.as_deref())
        })
        .clone()
}

/// The backend the tests run on.
///
/// # Panics
/// With the selection error's message when the environment names a backend that is unknown or
/// not compiled in.
pub fn backend() -> TestBackend {
    try_backend().unwrap_or_else(|err| panic!("cannot choose the test device: {err}"))
}

/// The device for a backend.
pub fn device_for(backend: TestBackend) -> Result<Device, DeviceSelectionError> {
    match backend {
        TestBackend::Flex => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        TestBackend::Wgpu => Ok(Device::wgpu(Default::default())),
        #[cfg(not(feature = "wgpu"))]
        TestBackend::Wgpu => Err(DeviceSelectionError::NotCompiled {
            var: TEST_DEVICE_VAR,
            backend,
        }),
    }
}

/// The device every test runs on (no autodiff). See the crate docs for how it is chosen.
///
/// # Panics
/// When the environment names a backend that is unknown or not compiled in.
pub fn device() -> Device {
    device_for(backend()).unwrap_or_else(|err| panic!("cannot choose the test device: {err}"))
}

/// The autodiff twin of [`device()`], for tests that need gradients.
pub fn autodiff_device() -> Device {
    device().autodiff()
}

/// Picks a tolerance by backend: GPU kernels (wgpu) reorder sums and use fast math, so some
/// comparisons need a looser bound there than on Flex.
pub fn tolerance(flex: f64, wgpu: f64) -> f64 {
    match backend() {
        TestBackend::Flex => flex,
        TestBackend::Wgpu => wgpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tensor;

    #[test]
    fn unset_variables_choose_flex() {
        assert_eq!(select_backend(None, None), Ok(TestBackend::Flex));
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(select_backend(Some(" FLEX "), None), Ok(TestBackend::Flex));
        assert_eq!(select_backend(None, Some("Flex")), Ok(TestBackend::Flex));
    }

    #[test]
    fn unknown_backend_is_an_error_naming_the_variable() {
        let err = select_backend(Some("tpu"), None).unwrap_err();
        assert!(matches!(
            err,
            DeviceSelectionError::Unknown {
                var: TEST_DEVICE_VAR,
                ..
            }
        ));
        assert!(
            err.to_string().contains("KINDLING_TEST_DEVICE=\"tpu\""),
            "{err}"
        );
    }

    #[test]
    fn wgpu_without_its_feature_says_which_feature() {
        let result = select_backend(Some("wgpu"), None);
        if cfg!(feature = "wgpu") {
            assert_eq!(result, Ok(TestBackend::Wgpu));
        } else {
            let err = result.unwrap_err();
            assert!(
                err.to_string().contains("--features kindling-testing/wgpu"),
                "{err}"
            );
        }
    }

    #[test]
    fn conflicting_variables_are_refused() {
        let err = select_backend(Some("flex"), Some("cuda")).unwrap_err();
        assert!(
            matches!(err, DeviceSelectionError::Conflict { .. }),
            "{err}"
        );
        assert_eq!(
            select_backend(Some("flex"), Some("flex")),
            Ok(TestBackend::Flex)
        );
    }

    #[test]
    fn the_selected_device_runs_tensor_ops() {
        let device = device();
        let x = Tensor::<1>::from_floats([1.0, -2.0, 3.0], &device);
        let y: Vec<f32> = (x.clone() * x).sum().try_into_vec_as().unwrap();
        assert_eq!(y, vec![14.0]);
    }

    #[test]
    fn the_device_matches_the_environment() {
        let debug = format!("{:?}", device());
        match backend() {
            TestBackend::Flex => assert!(debug.contains("Flex"), "{debug}"),
            TestBackend::Wgpu => assert!(debug.contains("Wgpu"), "{debug}"),
        }
    }

    #[test]
    fn autodiff_device_computes_gradients() {
        let device = autodiff_device();
        let x = Tensor::<1>::from_floats([1.0, 2.0], &device).require_grad();
        let grads = (x.clone() * x.clone()).sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().try_into_vec_as().unwrap();
        assert_eq!(g, vec![2.0, 4.0]);
    }
}
