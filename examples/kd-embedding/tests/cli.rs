//! Bad arguments are rejected before any work with one clear line.

use kindling_examples_common::cli::assert_rejected;

const EXE: &str = env!("CARGO_BIN_EXE_kd-embedding");

#[test]
fn bad_arguments_are_rejected_with_one_line() {
    assert_rejected(EXE, &["--k", "0"], "--k");
    assert_rejected(EXE, &["--k", "1"], "--k");
    assert_rejected(EXE, &["--d", "0"], "--d");
    assert_rejected(EXE, &["--epochs", "0"], "--epochs");
    assert_rejected(EXE, &["--corpus", "/nonexistent/ptb.txt"], "--corpus");
    assert_rejected(
        EXE,
        &["--distill", "/nonexistent/t.safetensors"],
        "--distill",
    );
    assert_rejected(EXE, &["--tensor", "weight"], "--tensor");
    assert_rejected(EXE, &["--out-dir", "/proc/no-such-folder"], "--out-dir");
}
