//! The one way a unit test may skip: it says which tool is missing, and under
//! `CI=true` (`.ci/run` exports it) a skip is a failure, so a CI run never
//! passes a check it did not make.

/// Skips `test` for `why`, or panics under `CI=true`.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run ({why}) and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: {why}");
}
