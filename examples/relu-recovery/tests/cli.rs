//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_relu-recovery");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--k", "30"], "--k");
    assert_rejected(EXE, &["--sigma", "-0.1"], "--sigma");
    assert_rejected(EXE, &["--kappa", "0.5"], "--kappa");
    assert_rejected(EXE, &["--n", "10"], "--n");
    assert_rejected(EXE, &["--lr", "0"], "--lr");
    assert_rejected(EXE, &["--out-dir", "/proc/no-such-folder"], "--out-dir");
}
