//! What kiln's fuzz targets share: a scratch directory for the parsers that
//! read files (on /dev/shm when there is one, removed when the fuzzer
//! exits), and text helpers.
//!
//! This is test code: a harness that cannot set itself up panics, which
//! libFuzzer reports like any crash.

pub mod fake_host;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// This process's scratch directory, created on first use and removed at
/// exit (libFuzzer ends a run with `exit`, which runs `atexit` handlers).
pub fn scratch() -> &'static Path {
    SCRATCH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("kiln-fuzz-")
            .tempdir_in(base)
            .expect("cannot create the fuzzer's scratch directory")
            .keep();
        // SAFETY: `remove_scratch` is a plain function that only reads a
        // static set before it is registered.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}

/// Writes `bytes` to `name` in the scratch directory and returns its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).expect("cannot write a scratch file");
    path
}

/// Splits `data` at NUL bytes into at most `n` texts (UTF-8, lossily), for
/// targets that read several files at once.
pub fn texts(data: &[u8], n: usize) -> Vec<String> {
    data.splitn(n, |&b| b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// Runs `kiln inspect` on `bytes` written to the scratch file `name`, as
/// text and as JSON. Errors are rendered, as `kiln inspect` prints them.
pub fn inspect_file(name: &str, bytes: &[u8]) {
    let path = scratch_file(name, bytes);
    for json in [false, true] {
        let mut out = Vec::new();
        if let Err(e) = kiln::inspect::inspect(&path, json, &mut out) {
            let _ = kiln_abi::error::Chain::new(&e).to_string();
        }
    }
}

/// Guest RAM for the boot targets: 64 MiB, mapped once per process (only
/// the pages a kernel image touches cost anything).
const GUEST_RAM: u64 = 64 << 20;

thread_local! {
    static RAM: kiln_runtime::vm::memory::GuestRam =
        kiln_runtime::vm::memory::create(GUEST_RAM, false).expect("cannot map guest RAM");
}

/// Loads the kernel at `kernel` as the runtime boots a VM, with a small
/// initrd and a command line.
pub fn boot(kernel: &Path) {
    let initrd = scratch().join("initrd");
    if !initrd.is_file() {
        scratch_file("initrd", &[0x5a; 4096]);
    }
    let spec = kiln_runtime::boot::BootSpec {
        kernel,
        initrd: Some(&initrd),
        cmdline: "console=ttyS0 panic=-1",
        mem_size: GUEST_RAM,
        cpus: 2,
        pci: &[],
        rsdp: Some(0xe0000),
    };
    RAM.with(|ram| {
        if let Err(e) = kiln_runtime::boot::load(ram, &spec) {
            let _ = kiln_abi::error::Chain::new(&e).to_string();
        }
    });
}
