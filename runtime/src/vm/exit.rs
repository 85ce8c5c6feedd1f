//! How a VM ends, as its vCPUs find out, and the process exit code and
//! status line each end maps to.
//!
//! Process exit codes (documented in docs/runtime.md):
//!
//! | end                        | status line   | exit code        |
//! |----------------------------|---------------|------------------|
//! | exit port value N <= 127   | exited        | N                |
//! | exit port value N >= 128   | exited        | 127              |
//! | guest poweroff (ACPI S5)   | exited        | 0                |
//! | guest reboot               | failed        | 193              |
//! | triple fault               | failed        | 194              |
//! | KVM internal error         | failed        | 195              |
//! | the VMM could not run it   | failed        | 196              |
//! | a vCPU thread panicked     | failed        | 197              |
//! | a vCPU thread got stuck    | failed        | 198              |
//! | signal S (SIGTERM, SIGINT) | failed        | 128 + S          |

use crate::devices::StopRequest;
use crate::status::{StatusLine, VmState};
use nix::sys::signal::Signal;

// The codes are kiln-abi's, shared with the guests and `kiln test`.
pub use kiln_abi::exit::{
    CODE_EXIT_PORT_MAX, CODE_INTERNAL_ERROR, CODE_REBOOT, CODE_SIGNAL_BASE, CODE_TRIPLE_FAULT,
    CODE_VCPU_PANIC, CODE_VCPU_STUCK, CODE_VMM_ERROR,
};

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest wrote this value to the exit port.
    Exited(u32),
    /// The guest powered off (ACPI S5, or a final HLT without an irqchip).
    Poweroff,
    /// The guest reset the machine (i8042 reset, or KVM's reset event).
    Reboot,
    /// A vCPU hit a triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM could not go on running the guest.
    InternalError(String),
    /// The runtime received this signal and stopped the VM.
    Signal(i32),
    /// A vCPU thread panicked (a VMM bug); the message says where.
    VcpuPanic { index: u8, message: String },
    /// A vCPU thread stayed outside `KVM_RUN` this long (the VMM hung in
    /// device emulation or on a lock).
    VcpuStuck { index: u8, secs: u64 },
}

impl VmExit {
    /// The process exit code for this end (see the table in the module docs).
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::Exited(n) => i32::try_from(*n)
                .unwrap_or(i32::MAX)
                .min(CODE_EXIT_PORT_MAX),
            VmExit::Poweroff => 0,
            VmExit::Reboot => CODE_REBOOT,
            VmExit::TripleFault => CODE_TRIPLE_FAULT,
            VmExit::InternalError(_) => CODE_INTERNAL_ERROR,
            VmExit::Signal(s) => CODE_SIGNAL_BASE + s,
            VmExit::VcpuPanic { .. } => CODE_VCPU_PANIC,
            VmExit::VcpuStuck { .. } => CODE_VCPU_STUCK,
        }
    }

    /// A one-word name for the reason.
    pub fn reason(&self) -> &str {
        match self {
            VmExit::Exited(_) => "exit-port",
            VmExit::Poweroff => "poweroff",
            VmExit::Reboot => "reboot",
            VmExit::TripleFault => "triple-fault",
            VmExit::InternalError(_) => "internal-error",
            VmExit::Signal(_) => "signal",
            VmExit::VcpuPanic { .. } => "vcpu-panic",
            VmExit::VcpuStuck { .. } => "vcpu-stuck",
        }
    }

    /// Whether the guest ended on its own terms (exit port or poweroff).
    pub fn guest_finished(&self) -> bool {
        matches!(self, VmExit::Exited(_) | VmExit::Poweroff)
    }

    /// The status line announcing this end for VM `name`.
    pub fn status_line<'a>(&self, name: &'a str) -> StatusLine<'a, String> {
        let state = if self.guest_finished() {
            VmState::Exited
        } else {
            VmState::Failed
        };
        let reason = match self {
            VmExit::Exited(n) if i64::from(*n) <= i64::from(CODE_EXIT_PORT_MAX) => None,
            VmExit::Exited(n) => Some(format!("exit-port value {n}")),
            other => Some(other.to_string()),
        };
        StatusLine::Vm {
            name,
            state,
            code: Some(self.exit_code()),
            reason,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Exited(n) => write!(f, "exit-port value {n}"),
            VmExit::Poweroff => f.write_str("poweroff"),
            VmExit::Reboot => f.write_str("reboot"),
            VmExit::TripleFault => f.write_str("triple-fault"),
            VmExit::InternalError(why) => write!(f, "internal-error: {why}"),
            VmExit::Signal(s) => {
                let name = Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown");
                write!(f, "signal {name}")
            }
            VmExit::VcpuPanic { index, message } => {
                write!(f, "vcpu-panic: vCPU {index} panicked: {message}")
            }
            VmExit::VcpuStuck { index, secs } => write!(
                f,
                "vcpu-stuck: vCPU {index} stayed outside KVM_RUN for {secs} s"
            ),
        }
    }
}

impl From<StopRequest> for VmExit {
    fn from(r: StopRequest) -> Self {
        match r {
            StopRequest::Exit(n) => VmExit::Exited(n),
            StopRequest::Poweroff => VmExit::Poweroff,
            StopRequest::Reboot => VmExit::Reboot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_table() {
        assert_eq!(VmExit::Exited(0).exit_code(), 0);
        assert_eq!(VmExit::Exited(42).exit_code(), 42);
        assert_eq!(VmExit::Exited(127).exit_code(), 127);
        assert_eq!(VmExit::Exited(128).exit_code(), 127);
        assert_eq!(VmExit::Exited(u32::MAX).exit_code(), 127);
        assert_eq!(VmExit::Poweroff.exit_code(), 0);
        assert_eq!(VmExit::Reboot.exit_code(), 193);
        assert_eq!(VmExit::TripleFault.exit_code(), 194);
        assert_eq!(VmExit::InternalError("x".into()).exit_code(), 195);
        assert_eq!(VmExit::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(VmExit::Signal(libc::SIGINT).exit_code(), 130);
        // Every non-guest reason is distinct and above the exit port range.
        let codes = [
            VmExit::Reboot.exit_code(),
            VmExit::TripleFault.exit_code(),
            VmExit::InternalError(String::new()).exit_code(),
            CODE_VMM_ERROR,
            VmExit::VcpuPanic {
                index: 0,
                message: String::new(),
            }
            .exit_code(),
            VmExit::VcpuStuck { index: 0, secs: 0 }.exit_code(),
            VmExit::Signal(libc::SIGTERM).exit_code(),
            VmExit::Signal(libc::SIGINT).exit_code(),
        ];
        for (i, a) in codes.iter().enumerate() {
            assert!(*a > CODE_EXIT_PORT_MAX && *a < 256);
            assert!(codes[i + 1..].iter().all(|b| b != a), "{a} repeats");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            VmExit::Exited(3).status_line("hello").to_string(),
            "kiln: vm=hello state=exited code=3"
        );
        assert_eq!(
            VmExit::Exited(300).status_line("hello").to_string(),
            "kiln: vm=hello state=exited code=127 reason=exit-port value 300"
        );
        assert_eq!(
            VmExit::Poweroff.status_line("l").to_string(),
            "kiln: vm=l state=exited code=0 reason=poweroff"
        );
        assert_eq!(
            VmExit::Signal(15).status_line("l").to_string(),
            "kiln: vm=l state=failed code=143 reason=signal SIGTERM"
        );
        assert_eq!(
            VmExit::TripleFault.status_line("l").to_string(),
            "kiln: vm=l state=failed code=194 reason=triple-fault"
        );
        assert_eq!(VmExit::Reboot.reason(), "reboot");
        assert_eq!(VmExit::InternalError("x".into()).reason(), "internal-error");
    }
}
