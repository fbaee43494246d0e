//! Only here so that the build-dependencies in Cargo.toml unify the features
//! of the crates built for the host (proc macros) between the two commands.
fn main() {}
