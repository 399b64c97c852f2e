//! Test support shared by every kindling crate (a dev-dependency only; never published).
//!
//! Three things live here, so that each crate's tests read the same way:
//!
//! * **the backend switch**: [`device()`] and [`autodiff_device()`] return the device every test
//!   runs on, chosen at run time by the `KINDLING_TEST_DEVICE` environment variable (or burn's
//!   own `BURN_DEVICE` when that is unset): `flex` (the default, burn's pure-Rust CPU backend)
//!   or `wgpu` (compiled in by this crate's `wgpu` feature; in CI it runs on Mesa's software
//!   Vulkan, on a lent GPU on its Vulkan driver). Naming a backend whose feature is off is an
//!   error that says which feature to turn on, never a silent fallback;
//! * **statistical assertions** ([`stats`]): the mean of seeded draws compared with its
//!   expectation within a tolerance derived from the estimator's variance, and relative errors;
//! * **tensor comparisons** ([`assert_tensor_close`]) that print both tensors on failure;
//! * **optimizer checkpoints** ([`assert_optimizer_resume`]): save → load → continue equals the
//!   uninterrupted run.
//!
//! ```
//! use burn::tensor::Tensor;
//!
//! let device = kindling_testing::device();
//! let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
//! kindling_testing::assert_tensor_close(&(x * 2.0), &[2.0, 4.0, 6.0], 1e-6);
//! ```

mod backend;
mod compare;
mod resume;
pub mod stats;

pub use backend::*;
pub use compare::*;
pub use resume::*;
