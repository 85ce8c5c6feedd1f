//! The VMM's SIGSYS handler: what happens when a thread makes a system
//! call its filter forbids. It writes the call's number and the thread to
//! PID 1 (a [`Violation`] on the heartbeat pipe) and to standard error,
//! then ends the process with [`CODE_SECCOMP`]. Only async-signal-safe
//! work: atomics, a const thread-local, `write` and `_exit`, all allowed
//! by every filter.
//!
//! The report comes from the process that misbehaved, so PID 1 takes it as
//! a hint for the reason text only: the verdict (`state=failed`) stands
//! on how the process ended, which the kernel reports.

use super::{ThreadKind, CODE_SECCOMP};
use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// First byte of a violation on the heartbeat pipe (beside
/// `watchdog::BEAT` and `watchdog::STOPPING`); [`VIOLATION_LEN`] bytes in
/// all, written at once (a pipe write under PIPE_BUF is atomic).
pub const VIOLATION: u8 = b'!';
pub const VIOLATION_LEN: usize = 5;

/// Where the handler reports to PID 1 (-1: nowhere).
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    /// This thread's kind and index, for the report. Const-initialized and
    /// without a destructor, so reading it in a handler touches only
    /// the thread's static TLS block.
    static THREAD: Cell<(u8, u8)> = const { Cell::new((0, 0)) };
}

const KIND_MAIN: u8 = 0;
const KIND_VCPU: u8 = 1;

/// A forbidden system call, as the handler reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub syscall: u16,
    pub kind: ThreadKind,
    /// The vCPU index (0 for the main thread).
    pub index: u8,
}

impl Violation {
    fn encode(self) -> [u8; VIOLATION_LEN] {
        let [lo, hi] = self.syscall.to_le_bytes();
        let kind = match self.kind {
            ThreadKind::Main => KIND_MAIN,
            ThreadKind::Vcpu => KIND_VCPU,
        };
        [VIOLATION, lo, hi, kind, self.index]
    }

    /// Reads a report (its [`VIOLATION_LEN`] bytes, the mark first).
    pub fn decode(bytes: &[u8]) -> Option<Violation> {
        let &[VIOLATION, lo, hi, kind, index] = bytes else {
            return None;
        };
        let kind = match kind {
            KIND_MAIN => ThreadKind::Main,
            KIND_VCPU => ThreadKind::Vcpu,
            _ => return None,
        };
        Some(Violation {
            syscall: u16::from_le_bytes([lo, hi]),
            kind,
            index,
        })
    }

    /// The `reason=` PID 1 gives the VM.
    pub fn reason(&self) -> String {
        let thread = match self.kind {
            ThreadKind::Main => "main thread".to_string(),
            ThreadKind::Vcpu => format!("vCPU {} thread", self.index),
        };
        format!(
            "seccomp: the VMM's {thread} made system call {}, which its seccomp filter forbids",
            self.syscall
        )
    }
}

/// Records which thread this is for a later report.
pub(super) fn name_this_thread(kind: ThreadKind, index: u8) {
    let kind = match kind {
        ThreadKind::Main => KIND_MAIN,
        ThreadKind::Vcpu => KIND_VCPU,
    };
    THREAD.with(|t| t.set((kind, index)));
}

/// `siginfo_t` as the kernel fills it for SIGSYS (`_sigsys` in
/// include/uapi/asm-generic/siginfo.h, x86-64 layout).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler,
    // which for SIGSYS holds the `_sigsys` member laid out as SigsysInfo
    // (both are at least that large).
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let (kind, index) = THREAD.try_with(Cell::get).unwrap_or((KIND_MAIN, 0));
    let syscall = u16::try_from(nr).unwrap_or(u16::MAX);
    let kind = if kind == KIND_VCPU {
        ThreadKind::Vcpu
    } else {
        ThreadKind::Main
    };
    let report = Violation {
        syscall,
        kind,
        index,
    }
    .encode();
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) of a local buffer; a closed fd only fails.
        unsafe { libc::write(fd, report.as_ptr().cast(), report.len()) };
    }
    let mut line = [0u8; 96];
    let len = message(&mut line, syscall);
    // SAFETY: write(2) of a local buffer to standard error.
    unsafe { libc::write(2, line.as_ptr().cast(), len) };
    // SAFETY: ends the process at once; nothing in it is to be trusted.
    unsafe { libc::_exit(CODE_SECCOMP) };
}

/// Writes "kiln-runtime: seccomp: forbidden system call N; the VMM ends\n"
/// into `buf` without allocating; returns its length.
fn message(buf: &mut [u8; 96], nr: u16) -> usize {
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if let Some(slot) = buf.get_mut(at) {
                *slot = b;
                at += 1;
            }
        }
    };
    put(b"kiln-runtime: seccomp: forbidden system call ");
    let mut digits = [0u8; 5];
    let mut n = nr;
    let mut first = digits.len();
    loop {
        first -= 1;
        if let Some(d) = digits.get_mut(first) {
            // n % 10 < 10.
            *d = b'0' + u8::try_from(n % 10).unwrap_or(0);
        }
        n /= 10;
        if n == 0 || first == 0 {
            break;
        }
    }
    put(digits.get(first..).unwrap_or_default());
    put(b"; the VMM ends\n");
    at
}

/// Installs the SIGSYS handler for the whole process; `report` is the
/// heartbeat pipe to PID 1, if there is one.
pub fn install_handler(report: Option<RawFd>) -> Result<(), super::SeccompError> {
    REPORT_FD.store(report.unwrap_or(-1), Ordering::Relaxed);
    // SA_SIGINFO, every signal blocked while it runs, no SA_NODEFER: a
    // forbidden call inside the handler finds SIGSYS blocked, and the
    // kernel then kills the process.
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| super::SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_round_trip() {
        let v = Violation {
            syscall: 321,
            kind: ThreadKind::Vcpu,
            index: 2,
        };
        assert_eq!(Violation::decode(&v.encode()), Some(v));
        assert_eq!(Violation::decode(b"!\x01"), None);
        assert_eq!(Violation::decode(b".\x01\x00\x00\x00"), None);
        assert_eq!(
            v.reason(),
            "seccomp: the VMM's vCPU 2 thread made system call 321, which its seccomp filter forbids"
        );
    }

    #[test]
    fn the_message_is_built_without_allocating() {
        let mut buf = [0u8; 96];
        for (nr, text) in [(0, "0"), (59, "59"), (65535, "65535")] {
            let n = message(&mut buf, nr);
            assert_eq!(
                std::str::from_utf8(&buf[..n]).unwrap(),
                format!("kiln-runtime: seccomp: forbidden system call {text}; the VMM ends\n")
            );
        }
    }
}
