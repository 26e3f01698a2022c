//! The fuzz corpora (`fuzz/corpus/<target>/`) replayed on stable: each file through its
//! target's check, the same code `cargo +nightly fuzz run` runs (`fuzz/src/lib.rs`, included
//! here), so a change that breaks an invariant on a known input fails `cargo test` where no
//! nightly toolchain exists. Regression inputs of past crashes live in the corpora too.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_checks;

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_targets_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    for (target, check) in fuzz_checks::TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path());
        let mut replayed = 0;
        for path in entries {
            let data = std::fs::read(&path).expect("a corpus file");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(path.display().to_string());
            }
            replayed += 1;
        }
        assert!(replayed > 0, "{}: empty corpus", dir.display());
    }
    assert!(failures.is_empty(), "failing corpus files: {failures:#?}");
}
