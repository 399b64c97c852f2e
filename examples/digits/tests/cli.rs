//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_digits");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--epochs", "0"], "--epochs");
    assert_rejected(EXE, &["--lr", "-1"], "--lr");
    assert_rejected(EXE, &["--lr", "nan"], "--lr");
    assert_rejected(EXE, &["--test-fraction", "1"], "--test-fraction");
    assert_rejected(EXE, &["--batch", "0"], "--batch");
    assert_rejected(EXE, &["--device", "tpu"], "--device");
    assert_rejected(EXE, &["--no-such-flag"], "--no-such-flag");
}
