//! Link the hello unikernel as a freestanding static ELF at 1 MiB physical.
//!
//! The installed target is `x86_64-unknown-linux-gnu`, whose default link
//! pulls in crt files, libc and a PIE layout; these arguments turn that off
//! and hand placement to our own linker script.

use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        // Cargo always sets this for build scripts; without it nothing can be linked.
        println!("cargo:warning=CARGO_MANIFEST_DIR is unset; run the build through cargo");
        std::process::exit(1);
    };
    let script = PathBuf::from(dir).join("linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        // No .eh_frame_hdr: panics abort, nothing unwinds.
        "-Wl,--no-eh-frame-hdr",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
