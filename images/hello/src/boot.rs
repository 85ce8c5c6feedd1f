//! PVH entry: from 32-bit protected mode to `kmain` in 64-bit long mode.
//!
//! PVH (Xen's direct boot ABI, also used by QEMU, Firecracker, Cloud
//! Hypervisor and linux-loader) starts the guest at the address in the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note: 32-bit protected mode, flat CS/DS, paging
//! off, no stack, EBX = physical address of `struct hvm_start_info`.
//!
//! The stub clears `.bss`, identity-maps the first [`IDENTITY_MAP_GIB`] GiB
//! with 2 MiB pages (one page directory per GiB, all under PML4[0], so up to
//! 512 GiB by raising the constant), enables SSE (Rust's x86_64 code uses
//! it), PAE, long mode and paging, loads a GDT with a 64-bit code segment,
//! installs the exception handlers and calls `kmain(start_info)` on a 64 KiB
//! stack in `.bss`. Interrupts stay off.

use core::arch::global_asm;

/// GiB of physical memory identity-mapped from address 0. Four covers guest
/// RAM below the 32-bit PCI hole and the hole itself (32-bit BARs, local
/// APIC, I/O APIC); a BAR placed higher needs a larger value.
pub const IDENTITY_MAP_GIB: usize = 4;
/// End of the identity map.
pub const IDENTITY_MAP_END: u64 = (IDENTITY_MAP_GIB as u64) << 30;
const STACK_SIZE: usize = 64 * 1024;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                      // n_namesz: "Xen\0"
    .long 8                      // n_descsz
    .long 18                     // n_type: XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .p2align 2
    .quad pvh_start32            // 8 bytes, as Linux emits it (QEMU reads 8)

    .section .bss.boot, "aw", @nobits
    .p2align 12
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * {gib}
    .p2align 4
boot_stack:
    .skip {stack_size}
boot_stack_top:

    .section .rodata.boot, "a"
    .p2align 3
boot_gdt:
    .quad 0                      // null
    .quad 0x00af9b000000ffff     // 0x08: 64-bit code, present, accessed
    .quad 0x00cf93000000ffff     // 0x10: data, present, writable, accessed
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    // EBX (start info) is callee-saved in the SysV ABI and untouched below,
    // so it survives until kmain's call.

    // Zero .bss (page tables and stack live there).
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    // PML4[0] -> PDPT.
    movl $boot_pdpt + 0x3, boot_pml4          // present | writable

    // PDPT[i] -> page directory i, for each identity-mapped GiB.
    xorl %ecx, %ecx
    movl $boot_pd + 0x3, %eax
.Lfill_pdpt:
    movl %eax, boot_pdpt(,%ecx,8)
    addl $4096, %eax
    incl %ecx
    cmpl ${gib}, %ecx
    jb .Lfill_pdpt

    // PD entry j maps j * 2 MiB: present | writable | 2 MiB page.
    xorl %ecx, %ecx
.Lfill_pd:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    movl %ecx, %edx
    shrl $11, %edx                            // bits 32+ of j * 2 MiB
    movl %edx, boot_pd + 4(,%ecx,8)
    incl %ecx
    cmpl ${gib} * 512, %ecx
    jb .Lfill_pd

    // CR4: PAE, OSFXSR, OSXMMEXCPT.
    movl %cr4, %eax
    orl $(1 << 5) | (1 << 9) | (1 << 10), %eax
    movl %eax, %cr4

    movl $boot_pml4, %eax
    movl %eax, %cr3

    // EFER.LME.
    movl $0xc0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr

    // CR0: PG, MP, PE on; EM, TS off (SSE must not trap).
    movl %cr0, %eax
    andl $~((1 << 2) | (1 << 3)), %eax
    orl $(1 << 31) | (1 << 1) | (1 << 0), %eax
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmpl $0x08, $.Llong_mode

    .code64
.Llong_mode:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    pushq $0
    popfq                        // IF, DF, AC off

    call {install_exceptions}
    movl %ebx, %edi              // kmain(start_info), zero-extended
    call {kmain}
    ud2
"#,
    gib = const IDENTITY_MAP_GIB,
    stack_size = const STACK_SIZE,
    install_exceptions = sym crate::exceptions::install,
    kmain = sym crate::kmain,
    options(att_syntax)
);
