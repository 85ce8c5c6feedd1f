//! CPU exception handlers: report the fault on COM1 and leave with code 102.
//!
//! Without an IDT a fault (say, a page fault on an unmapped BAR) becomes a
//! triple fault and the VMM sees a silent reset; with one, the console shows
//! which fault, where, and the exit code tells a test runner it failed.
//! Only the 32 exception vectors are set; interrupts stay disabled.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use kiln_abi::exit::GUEST_EXCEPTION;
use kiln_hello::exit::exit;
use kiln_hello::println;

const VECTORS: usize = 32;
const KERNEL_CS: u64 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate.
const INTERRUPT_GATE: u64 = 0x8e;

global_asm!(
    r#"
    .macro exception_stub vector, has_error
    .p2align 4
exception_stub_\vector:
    .if \has_error == 0
    pushq $0                     // uniform frame: a zero error code
    .endif
    pushq $\vector
    jmp exception_common
    .endm

    .section .text.exceptions, "ax"
    exception_stub 0, 0
    exception_stub 1, 0
    exception_stub 2, 0
    exception_stub 3, 0
    exception_stub 4, 0
    exception_stub 5, 0
    exception_stub 6, 0
    exception_stub 7, 0
    exception_stub 8, 1
    exception_stub 9, 0
    exception_stub 10, 1
    exception_stub 11, 1
    exception_stub 12, 1
    exception_stub 13, 1
    exception_stub 14, 1
    exception_stub 15, 0
    exception_stub 16, 0
    exception_stub 17, 1
    exception_stub 18, 0
    exception_stub 19, 0
    exception_stub 20, 0
    exception_stub 21, 1
    exception_stub 22, 0
    exception_stub 23, 0
    exception_stub 24, 0
    exception_stub 25, 0
    exception_stub 26, 0
    exception_stub 27, 0
    exception_stub 28, 0
    exception_stub 29, 1
    exception_stub 30, 1
    exception_stub 31, 0

exception_common:
    movq %rsp, %rdi              // &Frame
    andq $-16, %rsp              // SysV call alignment
    call {handler}
    ud2

    .section .rodata.exceptions, "a"
    .p2align 3
    .global kiln_exception_stubs
kiln_exception_stubs:
    .quad exception_stub_0, exception_stub_1, exception_stub_2, exception_stub_3
    .quad exception_stub_4, exception_stub_5, exception_stub_6, exception_stub_7
    .quad exception_stub_8, exception_stub_9, exception_stub_10, exception_stub_11
    .quad exception_stub_12, exception_stub_13, exception_stub_14, exception_stub_15
    .quad exception_stub_16, exception_stub_17, exception_stub_18, exception_stub_19
    .quad exception_stub_20, exception_stub_21, exception_stub_22, exception_stub_23
    .quad exception_stub_24, exception_stub_25, exception_stub_26, exception_stub_27
    .quad exception_stub_28, exception_stub_29, exception_stub_30, exception_stub_31
"#,
    handler = sym handle,
    options(att_syntax)
);

extern "C" {
    /// Addresses of the 32 stubs above, in vector order.
    static kiln_exception_stubs: [u64; VECTORS];
}

/// What the stub and the CPU pushed, lowest address first.
#[repr(C)]
struct Frame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// 32 gates of 16 bytes.
#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 2 * VECTORS]>);

// SAFETY: the IDT is written only by `install`, once, before `kmain` runs on
// the single CPU; afterwards only the CPU reads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([0; 2 * VECTORS]));

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Fills the IDT and loads it. Called once by the boot code before `kmain`.
pub extern "C" fn install() {
    // SAFETY: the table is defined in the asm above with exactly VECTORS quads.
    let stubs = unsafe { &*core::ptr::addr_of!(kiln_exception_stubs) };
    // SAFETY: see `impl Sync for Idt`: nothing else accesses the table now.
    let gates = unsafe { &mut *IDT.0.get() };
    for (gate, &stub) in gates.chunks_exact_mut(2).zip(stubs) {
        if let [low, high] = gate {
            *low = (stub & 0xffff)
                | KERNEL_CS << 16
                | INTERRUPT_GATE << 40
                | ((stub >> 16) & 0xffff) << 48;
            *high = stub >> 32;
        }
    }
    let pointer = IdtPointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is static, complete and points at valid handlers in
    // the kernel code segment; `lidt` only reads the 10-byte pointer.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
}

const NAMES: [&str; VECTORS] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range exceeded",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack-segment fault",
    "general protection fault",
    "page fault",
    "reserved",
    "x87 floating-point error",
    "alignment check",
    "machine check",
    "SIMD floating-point error",
    "virtualization exception",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security exception",
    "reserved",
];

extern "C" fn handle(frame: &Frame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let name = usize::try_from(frame.vector)
        .ok()
        .and_then(|v| NAMES.get(v))
        .unwrap_or(&"unknown");
    println!(
        "hello: exception {} ({name}) at rip {:#x} error {:#x} cr2 {cr2:#x} rsp {:#x} cs {:#x} rflags {:#x} ss {:#x}",
        frame.vector, frame.rip, frame.error, frame.rsp, frame.cs, frame.rflags, frame.ss
    );
    exit(GUEST_EXCEPTION)
}
