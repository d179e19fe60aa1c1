//! Every scenario in `scenarios/`, and randomized runs over many seeds.

use std::path::Path;

use vigil_sim::scenario::Scenario;

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "scn"))
        .collect();
    files.sort();
    let only = std::env::var("SCENARIO").ok();
    assert!(
        only.is_some() || files.len() >= 25,
        "only {} scenarios",
        files.len()
    );
    let mut failed = Vec::new();
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let outcome = match Scenario::parse(&text) {
            Ok(s) => s.run(),
            Err(e) => {
                failed.push(format!("{name}: {e}"));
                continue;
            }
        };
        if !outcome.ok() {
            eprintln!("=== scenario {name} failed\n{}", outcome.report());
            failed.push(name);
        } else if only.is_some() {
            eprintln!("=== scenario {name}\n{}", outcome.report());
        }
    }
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
}

#[test]
fn random_seeds_keep_the_invariants() {
    let seeds: u64 = std::env::var("SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut failed = Vec::new();
    let first: u64 = std::env::var("SEED_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        if let Err(report) = vigil_sim::random::run(seed) {
            if failed.is_empty() {
                eprintln!("{report}");
            }
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "seeds that failed: {failed:?}");
}
