//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_gwm-pictures");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--size", "3by3"], "--size");
    assert_rejected(EXE, &["--size", "1x5"], "--size");
    assert_rejected(EXE, &["--also", "9x8"], "--also");
    assert_rejected(EXE, &["--size", "3x3,4"], "--size");
    assert_rejected(EXE, &["--bond", "0"], "--bond");
    assert_rejected(EXE, &["--lr", "-0.1"], "--lr");
    assert_rejected(EXE, &["--out", "/nonexistent/dir/l.svg"], "--out");
}
