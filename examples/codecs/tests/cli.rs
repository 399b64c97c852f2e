//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_codecs");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--draws", "1"], "--draws");
    assert_rejected(EXE, &["--hidden", "-3"], "invalid value");
    assert_rejected(EXE, &["--out", "/nonexistent/dir/x.svg"], "--out");
}
