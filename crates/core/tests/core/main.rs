//! The core library against the proposal's own examples.

mod spec_examples;
