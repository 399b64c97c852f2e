//! The examples' command-line discipline: parse, check every argument before any work, and end
//! with one clear line and a non-zero status on any failure — never a panic with a backtrace.
//!
//! ```no_run
//! use clap::Parser;
//! use kindling_examples_common::cli;
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[arg(long, default_value_t = 3)]
//!     epochs: usize,
//! }
//!
//! fn main() {
//!     cli::run(
//!         |args: &Args| cli::at_least("--epochs", args.epochs, 1),
//!         |args| {
//!             println!("{} epochs", args.epochs);
//!             Ok(())
//!         },
//!     )
//! }
//! ```

use std::fmt::Display;
use std::path::Path;
use std::process::{Command, exit};

use clap::Parser;
use clap::error::ErrorKind;

/// What an example's check or run returns: `Err` holds the one line shown to the user.
pub type Outcome = Result<(), String>;

/// Exit status of a rejected command line (clap's convention).
pub const USAGE: i32 = 2;
/// Exit status of a run that failed after its arguments were accepted.
pub const FAILED: i32 = 1;

/// Parses the arguments (negative numbers are values, so `--bandwidth -1` reaches `check`),
/// runs `check` before any work, then `main`. Any failure prints `error: …` as one line on
/// standard error and exits non-zero ([`USAGE`] for arguments, [`FAILED`] for the run); a panic
/// prints one line too.
pub fn run<A: Parser>(check: impl FnOnce(&A) -> Outcome, main: impl FnOnce(A) -> Outcome) {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let place = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal failure: {}{place}", one_line(&message));
    }));
    let parsed = A::command()
        .allow_negative_numbers(true)
        .try_get_matches()
        .and_then(|matches| A::from_arg_matches(&matches));
    let args = match parsed {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{first} (see --help)");
            exit(USAGE)
        }
    };
    if let Err(why) = check(&args) {
        eprintln!("error: {}", one_line(&why));
        exit(USAGE);
    }
    if let Err(why) = main(args) {
        eprintln!("error: {}", one_line(&why));
        exit(FAILED);
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `value ≥ min`.
pub fn at_least<T: PartialOrd + Display>(flag: &str, value: T, min: T) -> Outcome {
    if value >= min {
        Ok(())
    } else {
        Err(format!("{flag} must be at least {min} (got {value})"))
    }
}

/// `lo ≤ value ≤ hi`.
pub fn between<T: PartialOrd + Display>(flag: &str, value: T, lo: T, hi: T) -> Outcome {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(format!("{flag} must be in {lo}..={hi} (got {value})"))
    }
}

/// A finite value `> 0` (a learning rate, a bandwidth).
pub fn positive(flag: &str, value: f64) -> Outcome {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(format!("{flag} must be a finite number > 0 (got {value})"))
    }
}

/// A finite value `≥ 0` (a noise level, a regulariser).
pub fn non_negative(flag: &str, value: f64) -> Outcome {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(format!("{flag} must be a finite number ≥ 0 (got {value})"))
    }
}

/// A file the example will write: its folder must exist and take a new file.
pub fn output_file(flag: &str, path: &Path) -> Outcome {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    writable(flag, folder, path)
}

/// A folder the example will write into: created if missing, and it must take a new file.
pub fn output_dir(flag: &str, path: &Path) -> Outcome {
    std::fs::create_dir_all(path)
        .map_err(|e| format!("{flag} {}: cannot create the folder: {e}", path.display()))?;
    writable(flag, path, path)
}

fn writable(flag: &str, folder: &Path, shown: &Path) -> Outcome {
    let probe = folder.join(format!(".kindling-write-probe-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "{flag} {}: cannot write there: {e}",
            shown.display()
        )),
    }
}

/// A file the example will read: it must open.
pub fn input_file(flag: &str, path: &Path) -> Outcome {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
}

/// For the examples' tests: runs the example binary `exe` with `args` and checks that it was
/// rejected as a user expects — a non-zero status, exactly one line on standard error starting
/// with `error:` and containing `needle`, and no panic.
///
/// # Panics
/// When any of that does not hold (this is a test assertion).
pub fn assert_rejected(exe: &str, args: &[&str], needle: &str) {
    let out = Command::new(exe)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the example binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!out.status.success(), "{args:?} was accepted:\n{stderr}");
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("error:"), "{args:?}: {}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

/// Says when a long loop should show its progress again: at most once per period, so a run
/// that takes minutes prints a line every few seconds whatever its step rate.
#[derive(Debug)]
pub struct Ticker {
    period: std::time::Duration,
    last: std::time::Instant,
}

impl Ticker {
    /// A ticker that is first due `period` from now.
    pub fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            last: std::time::Instant::now(),
        }
    }

    /// `true` (and restarts the period) when a period has passed since the last `true`.
    pub fn due(&mut self) -> bool {
        let due = self.last.elapsed() >= self.period;
        if due {
            self.last = std::time::Instant::now();
        }
        due
    }
}
