//! Image configs as `kiln build` loads them: parsed, then every value and
//! path checked, VM configs read from beside it.
#![no_main]

use kiln::image::{Image, ImageConfig};
use kiln_schema::config;
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path, PathBuf};

/// A source tree in the scratch directory: `images/` (where the image file
/// is), `configs/vm.toml` (a VM config) and `keys/repo.gpg` (a keyring).
fn tree() -> &'static Path {
    let root = kiln_fuzz::scratch();
    if !root.join("configs/vm.toml").is_file() {
        for d in ["images", "configs", "keys"] {
            std::fs::create_dir_all(root.join(d)).expect("scratch tree");
        }
        kiln_fuzz::scratch_file(
            "configs/vm.toml",
            b"name = \"vm\"\nmemory = \"64M\"\n[boot]\nkernel = \"cargo:kiln-hello\"\n",
        );
        kiln_fuzz::scratch_file("keys/repo.gpg", b"");
    }
    root
}

/// Only paths that stay inside the scratch tree: the fuzzer must not make
/// the target read the host's files (a FIFO or /proc file could block).
fn contained(p: &Path) -> bool {
    let mut depth = 0i32;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < -1 {
            return false;
        }
    }
    true
}

fuzz_target!(|src: &str| {
    let file = tree().join("images/fuzz.toml");
    let config: ImageConfig = match config::parse(&file, src) {
        Ok(c) => c,
        Err(e) => {
            let _ = kiln_abi::error::Chain::new(&e).to_string();
            return;
        }
    };
    let keyring = config
        .kernel
        .apt
        .as_ref()
        .and_then(|a| a.keyring.as_deref());
    if !config
        .vms
        .iter()
        .map(PathBuf::as_path)
        .chain(keyring)
        .all(contained)
    {
        return;
    }
    match Image::from_parts(config, &file, src.to_string(), tree().join("images")) {
        Ok(image) => {
            let _ = image.modules();
            let _ = image.apt_repo();
            let _ = image.error_at("kernel.source", "fuzzed").to_string();
        }
        Err(e) => {
            let _ = kiln_abi::error::Chain::new(&e).to_string();
        }
    }
});
