//! Feature unification for the workspace; it has no code. See its
//! `Cargo.toml` for why it exists.
