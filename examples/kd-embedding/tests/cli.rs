//! Bad arguments are rejected before any work with one clear line; a small table distils end to
//! end from a `.npy` file.

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
    assert_rejected(EXE, &["--synthetic-table", "30000"], "--synthetic-table");
    assert_rejected(EXE, &["--synthetic-table", "1x384"], "--synthetic-table");
    assert_rejected(EXE, &["--grid"], "--grid");
    assert_rejected(EXE, &["--guidance", "-1"], "--guidance");
    assert_rejected(EXE, &["--batch-size", "0"], "--batch-size");
    assert_rejected(EXE, &["--d-code", "0"], "--d-code");
    assert_rejected(EXE, &["--rq-margin", "-1"], "--rq-margin");
    assert_rejected(EXE, &["--rq-margin", "NaN"], "--rq-margin");
    assert_rejected(EXE, &["--logit-rate", "-0.5"], "--logit-rate");
    assert_rejected(EXE, &["--code-update", "sideways"], "--code-update");
}

/// A 300 × 16 `.npy` table (f32) runs through the distillation report: both baselines and the
/// KD codes, with the size and overlap columns.
#[test]
fn distils_a_npy_table() {
    let dir = std::env::temp_dir().join(format!("kd-embedding-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("table.npy");
    let (rows, cols) = (300usize, 16usize);
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for i in 0..rows * cols {
        let x = ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / cols % 5) as f32);
        bytes.extend(x.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    for update in ["exact", "straight-through"] {
        let out = std::process::Command::new(EXE)
            .args(["--distill", path.to_str().unwrap(), "--k", "8", "--d", "4"])
            .args([
                "--distill-steps",
                "30",
                "--batch-size",
                "100",
                "--probes",
                "50",
                "--code-update",
                update,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [
            "300 × 16",
            "product quantisation",
            "residual quantisation",
            "KD codes, d′ = 16, RQ start",
        ] {
            assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
