//! A Debian package as `kiln build` unpacks a kernel: the ar archive, its
//! `data.tar.*` member (xz, zstd, gzip or plain) and the tar inside,
//! unpacked into a fresh directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let deb = kiln_fuzz::scratch_file("kernel.deb", data);
    let root = kiln_fuzz::scratch().join("root");
    let _ = std::fs::remove_dir_all(&root);
    if let Err(e) = kiln::kernel::debian::unpack_data(&deb, "linux-image-fuzz", &root) {
        let _ = kiln_abi::error::Chain::new(&e).to_string();
    }
    // The tar crate refuses paths that leave the destination.
    let escaped = kiln_fuzz::scratch().join("escaped");
    assert!(!escaped.exists(), "the package wrote outside its root");
});
