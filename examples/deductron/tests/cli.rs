//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_deductron");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--text", "XOZ"], "--text");
    assert_rejected(EXE, &["--text", ""], "--text");
    assert_rejected(EXE, &["--stretch", "0"], "--stretch");
    assert_rejected(EXE, &["--train", "sgd", "--memory", "0"], "--memory");
    assert_rejected(EXE, &["--train", "anneal", "--seeds", "0"], "--seeds");
    assert_rejected(EXE, &["--out", "/nonexistent/dir/m.svg"], "--out");
}
