//! kiln: builds appliance images (a kernel and an initramfs whose PID 1 is
//! the kiln runtime), boots them on an emulated target, and judges them.

pub mod atomic;
pub mod build;
pub mod children;
pub mod compress;
pub mod cpio;
pub mod emulator;
pub mod harness;
pub mod image;
pub mod inspect;
pub mod installed;
pub mod kernel;
pub mod lab;
pub mod manifest;
pub mod new;
pub mod output;
pub mod payload;
pub mod progress;
pub mod secureboot;
