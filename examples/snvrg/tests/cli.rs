//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_snvrg");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--passes", "0"], "--passes");
    assert_rejected(EXE, &["--n", "100"], "--n");
    assert_rejected(EXE, &["--lambda", "-1"], "--lambda");
    assert_rejected(EXE, &["--lrs-mlp", "1,1,nan,1"], "--lrs-mlp");
    assert_rejected(EXE, &["--lrs-logistic", "1,0,1,1"], "--lrs-logistic");
    assert_rejected(EXE, &["--seeds", "0"], "--seeds");
    assert_rejected(EXE, &["--out-dir", "/proc/no-such-folder"], "--out-dir");
}
