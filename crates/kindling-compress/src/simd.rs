//! Runtime dispatch of the host kernels to the widest vector unit the CPU has.
//!
//! The crate is compiled for baseline x86-64 (SSE2: four f32 lanes, no 64-bit vector multiply),
//! so a user's binary runs on any x86-64 machine. [`wide!`] runs a chunk of work in a function
//! compiled for AVX-512 (F, DQ, BW, VL) or AVX2 when the CPU has it, found once at run time:
//! twice or four times the lanes, and SplitMix64's 64-bit multiplies in vectors (AVX-512 DQ)
//! instead of one at a time. Other architectures run the baseline code.
//!
//! **The results do not depend on the path.** Every level computes the same IEEE operations in
//! the same order on each lane: no fused multiply-add (FMA is not enabled, and no kernel calls
//! `mul_add`), no reassociated reductions (Rust never reorders float arithmetic). So a payload
//! is the same bytes, and a decode the same bits, on every CPU: replicas that decode the same
//! payloads stay identical across a mixed cluster. A test runs every codec at each level the
//! CPU has and compares bytes.

use std::sync::atomic::{AtomicU8, Ordering};

/// A vector extension the kernels can be compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Level {
    /// The target's baseline (SSE2 on x86-64).
    Baseline = 0,
    /// AVX2: eight f32 lanes.
    Avx2 = 1,
    /// AVX-512 F, DQ, BW and VL: sixteen f32 lanes and 64-bit multiplies in vectors.
    Avx512 = 2,
}

/// The widest [`Level`] kernels may use (tests lower it to compare paths); `u8::MAX` until
/// first read, when it takes the level [`detected`], lowered by `KINDLING_SIMD`.
static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

/// The widest level this CPU supports.
pub(crate) fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512dq") && has!("avx512bw") && has!("avx512vl") {
            return Level::Avx512;
        }
        if has!("avx2") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// The level [`wide!`] runs at: the widest the CPU has, at most the one the environment variable
/// `KINDLING_SIMD` names (`baseline`, `avx2` or `avx512`; to compare speeds, since the results
/// are the same).
pub(crate) fn level() -> Level {
    let cap = CAP.load(Ordering::Relaxed);
    let cap = if cap == u8::MAX {
        let asked = match std::env::var("KINDLING_SIMD").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        let level = asked.min(detected()) as u8;
        CAP.store(level, Ordering::Relaxed);
        level
    } else {
        cap
    };
    match cap {
        2 => Level::Avx512,
        1 => Level::Avx2,
        _ => Level::Baseline,
    }
}

/// Runs `f` with kernels allowed no wider than `cap`, then restores the cap. The results are the
/// same at every level; only tests call this, to check that.
#[cfg(test)]
pub(crate) fn capped<R>(cap: Level, f: impl FnOnce() -> R) -> R {
    let before = level();
    CAP.store(cap.min(detected()) as u8, Ordering::SeqCst);
    let result = f();
    CAP.store(before as u8, Ordering::SeqCst);
    result
}

/// Evaluates its body (an expression or a block: one chunk's serial loop) compiled for the
/// widest vector unit the CPU has (see the module docs), through [`run_wide`]. The body becomes
/// an `#[inline(always)]` closure, which is what puts it inside the function built for that
/// unit: a closure left out of line is compiled for the baseline. Its helpers should be
/// `#[inline]`, and closures it calls `#[inline(always)]` where they are written; work it hands
/// to other functions or threads runs at the baseline.
macro_rules! wide {
    ($($body:tt)*) => {
        $crate::simd::run_wide(
            #[inline(always)]
            || $($body)*,
        )
    };
}
pub(crate) use wide;

/// Runs `f` at the widest vector unit the CPU has; called through [`wide!`], which inlines the
/// body into it.
#[inline(always)]
pub(crate) fn run_wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match level() {
            // SAFETY: `level` returns a level only when the CPU has its features.
            Level::Avx512 => unsafe { avx512(f) },
            // SAFETY: as above.
            Level::Avx2 => unsafe { avx2(f) },
            Level::Baseline => f(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}
