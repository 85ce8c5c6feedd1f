//! Helpers for kiln's end-to-end tests.
