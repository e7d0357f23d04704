//! Every file of `fuzz/corpus/<target>/` (the seeds, and each input a fuzzer
//! ever found crashing, kept as a regression) through its target: none may
//! panic. Runs on stable, in every test run.

use std::path::Path;

#[test]
fn every_corpus_file_passes_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in ferry_fuzzing::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}: every target has seeds", dir.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let input = std::fs::read(&path).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(outcome.is_ok(), "{} panicked", path.display());
            replayed += 1;
        }
        assert!(replayed > 0, "{name} has no seeds in {}", dir.display());
    }
}
