//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_data-parallel");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--bandwidth=-1"], "--bandwidth");
    assert_rejected(EXE, &["--bandwidth", "-1"], "--bandwidth");
    assert_rejected(EXE, &["--workers", "0"], "--workers");
    assert_rejected(EXE, &["--epochs", "0"], "--epochs");
    assert_rejected(EXE, &["--batch", "0"], "--batch");
    assert_rejected(EXE, &["--protocol", "carrier-pigeon"], "carrier-pigeon");
    assert_rejected(
        EXE,
        &["--compare", "--out-dir", "/proc/no-such-folder"],
        "--out-dir",
    );
    assert_rejected(EXE, &["--compare", "--learner"], "--learner");
    assert_rejected(EXE, &["--emulate", "--learner"], "--learner");
}
