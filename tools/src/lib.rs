//! Tools for testing and demonstrating anon on one machine, with no internet:
//! a local HTTP origin and helpers that run the real binaries.

pub mod emulator;
pub mod origin;
pub mod process;
