//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_optimizers-digits");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--epochs", "0"], "--epochs");
    assert_rejected(EXE, &["--lr-signum", "-1"], "--lr-signum");
    assert_rejected(EXE, &["--lr-adam", "inf"], "--lr-adam");
    assert_rejected(EXE, &["--hidden", "0"], "--hidden");
    assert_rejected(EXE, &["--out", "/nonexistent/dir/x.svg"], "--out");
}
