//! filter-cost: what the VMM's seccomp filter adds to each system call a
//! vCPU thread makes, measured on this machine in one process: the same
//! calls timed before and after the thread installs the vCPU filter
//! (`kiln_runtime::sandbox::seccomp`, as the VMM builds it). A VM exit that
//! reaches the VMM costs one `KVM_RUN` ioctl and, for console output, one
//! `write`; with the exit counts `KILN_VMM_STATS` reports, this bounds the
//! filters' share of a boot without the run-to-run noise of whole boots
//! (bench/vmm.sh runs it before its sandbox table; docs/benchmarks.md).

use kiln_runtime::sandbox::seccomp::{program, ThreadKind};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Instant;

/// Calls per round; rounds per child; children per setting, alternating.
const CALLS: u32 = 100_000;
const ROUNDS: usize = 3;
const CHILDREN: usize = 9;
/// `_IO(KVMIO, 0x80)`: on /dev/null it fails with ENOTTY after the filter
/// has checked its request number, as a real KVM_RUN is checked.
const KVM_RUN: libc::c_ulong = 0xAE80;

/// Nanoseconds per call of `call`: the fastest of [`ROUNDS`] rounds (the
/// least disturbed by anything else on the machine).
fn per_call(mut call: impl FnMut()) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..CALLS {
                call();
            }
            t.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS)
        })
        .fold(f64::INFINITY, f64::min)
}

/// `write` and `KVM_RUN` per call in this process, after installing the
/// vCPU filter when `filtered`.
fn measure(filtered: bool) -> Result<[f64; 2], String> {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null: {e}"))?;
    let fd = null.as_raw_fd();
    if filtered {
        let bpf = program(ThreadKind::Vcpu).map_err(|e| e.to_string())?;
        seccompiler::apply_filter(&bpf).map_err(|e| e.to_string())?;
    }
    let byte = [b'x'];
    let write = || {
        // SAFETY: writes one byte from a live buffer to an open fd.
        unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
    };
    let kvm_run = || {
        // SAFETY: an ioctl without an argument pointer on /dev/null, which
        // refuses it (ENOTTY) and touches no memory.
        unsafe { libc::ioctl(fd, KVM_RUN, 0) };
    };
    Ok([per_call(write), per_call(kvm_run)])
}

/// [`measure`] in a forked child (a filter cannot be lifted), its two
/// numbers sent back through a pipe.
fn in_child(filtered: bool) -> Result<[f64; 2], String> {
    let (r, w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the child measures, writes 16 bytes and leaves with _exit;
    // this process has one thread, so fork copies no held lock.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let code = match measure(filtered) {
                Ok([a, b]) => {
                    let mut out = [0u8; 16];
                    out[..8].copy_from_slice(&a.to_le_bytes());
                    out[8..].copy_from_slice(&b.to_le_bytes());
                    i32::from(nix::unistd::write(&w, &out) != Ok(16))
                }
                Err(e) => {
                    eprintln!("filter-cost: {e}");
                    1
                }
            };
            // SAFETY: ends the child at once, as forked children should.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut got = Vec::new();
            std::fs::File::from(r)
                .read_to_end(&mut got)
                .map_err(|e| format!("read: {e}"))?;
            let _ = nix::sys::wait::waitpid(child, None);
            let (Some(a), Some(b)) = (got.get(..8), got.get(8..16)) else {
                return Err("a measuring child failed".into());
            };
            let f = |s: &[u8]| <[u8; 8]>::try_from(s).map_or(f64::NAN, f64::from_le_bytes);
            Ok([f(a), f(b)])
        }
    }
}

fn main() -> ExitCode {
    let mut best = [[f64::INFINITY; 2]; 2];
    for _ in 0..CHILDREN {
        for (filtered, slot) in [false, true].into_iter().zip(best.iter_mut()) {
            match in_child(filtered) {
                Ok(t) => {
                    for (b, v) in slot.iter_mut().zip(t) {
                        *b = b.min(v);
                    }
                }
                Err(e) => {
                    eprintln!("filter-cost: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let [before, after] = best;
    println!(
        "The vCPU thread's seccomp filter, per system call (fastest of {} rounds of {CALLS} calls, without and with alternating)\n",
        CHILDREN * ROUNDS
    );
    println!("| system call | ns without | ns with filter | ns added |");
    println!("|---|---|---|---|");
    for (i, name) in ["write (console)", "ioctl KVM_RUN"].iter().enumerate() {
        let (b, a) = (
            before.get(i).copied().unwrap_or(0.0),
            after.get(i).copied().unwrap_or(0.0),
        );
        println!("| {name} | {b:.0} | {a:.0} | {:+.0} |", a - b);
    }
    let added: f64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    println!("\nAbout {added:.0} ns per VM exit that reaches the VMM (one KVM_RUN, one write).");
    ExitCode::SUCCESS
}
