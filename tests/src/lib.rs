//! Helpers for kiln's end-to-end tests.

pub mod qemu;
