//! The fuzz corpora (`fuzz/corpus/<target>/`) replayed on stable: each file through its
//! target's check, the same code `cargo +nightly fuzz run` runs (`fuzz/src/lib.rs`, included
//! here), so a change that breaks an invariant on a known input fails `cargo test` where no
//! nightly toolchain exists. The inputs of past crashes are in the corpora too
//! (`regression-*`). `fuzz/open/<target>/` holds crashes found but not fixed yet
//! (fuzz/README.md): `cargo test --test fuzz_corpus -- --ignored` replays them.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_checks;

use std::path::{Path, PathBuf};

/// Replays every file under `dir/<target>/`; the files that fail, and how many were replayed.
fn replay(dir: &Path) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, check) in fuzz_checks::TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(target)) else {
            continue;
        };
        for path in entries.map(|e| e.expect("a directory entry").path()) {
            let data = std::fs::read(&path).expect("a corpus file");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(path.display().to_string());
            }
            replayed += 1;
        }
    }
    (failures, replayed)
}

fn fuzz_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(name)
}

#[test]
fn every_corpus_file_passes_its_targets_checks() {
    let corpus = fuzz_dir("corpus");
    for (target, _) in fuzz_checks::TARGETS {
        assert!(corpus.join(target).is_dir(), "no corpus for {target}");
    }
    let (failures, replayed) = replay(&corpus);
    assert!(replayed > 0);
    assert!(failures.is_empty(), "failing corpus files: {failures:#?}");
}

#[test]
#[ignore = "open findings outside the fuzzed files, reported in fuzz/README.md"]
fn open_findings_pass_once_fixed() {
    let (failures, _) = replay(&fuzz_dir("open"));
    assert!(failures.is_empty(), "still failing: {failures:#?}");
}
