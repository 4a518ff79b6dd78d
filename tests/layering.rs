//! The layout's one rule: arrows point down. The helper modules (thread slots and
//! stamped counters, nanosecond clocks, backoff, configuration checks, outcomes, the sync shim) import
//! nothing from the capability modules (breaker, retry, watchdog, keyed, http), so no
//! module depends on itself through another. (`src/chain.rs` is not one of them: it
//! sits above the breaker, finding its public `Open` error in error chains for the
//! retry and http modules.)

use std::path::Path;

const HELPERS: [&str; 6] = [
    "src/stripe.rs",
    "src/nanos.rs",
    "src/backoff.rs",
    "src/config.rs",
    "src/outcome.rs",
    "src/sync.rs",
];
const CAPABILITIES: [&str; 5] = ["breaker", "retry", "watchdog", "keyed", "http"];

/// The code of a file without its comments (line comments and doc comments).
fn code(path: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn helper_modules_import_nothing_from_capability_modules() {
    for helper in HELPERS {
        let code = code(helper);
        for capability in CAPABILITIES {
            for path in [
                format!("crate::{capability}"),
                format!("super::{capability}"),
            ] {
                assert!(
                    !code.contains(&path),
                    "{helper} refers to `{path}`: helpers must not depend on {capability}"
                );
            }
        }
    }
}

#[test]
fn the_check_sees_an_import() {
    // The check reads code, not comments: a `use` line is found, a comment is not.
    let sample = "use crate::breaker::machine::Shard; // crate::retry";
    let code: String = sample
        .lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect();
    assert!(code.contains("crate::breaker"));
    assert!(!code.contains("crate::retry"));
}
