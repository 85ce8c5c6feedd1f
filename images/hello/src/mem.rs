//! The C memory functions the compiler calls (`memcpy`, `memmove`, `memset`,
//! `memcmp`, `bcmp`).
//!
//! On `x86_64-unknown-linux-gnu` they come from libc, which a freestanding
//! image does not link, and `compiler_builtins` exports its own copies only
//! on targets without a libc; hence these. Copies and fills use `rep movsb`/
//! `rep stosb` (fast on every CPU with ERMSB, and the compiler cannot turn
//! them back into a call to themselves); comparisons are byte loops.

use core::arch::asm;

/// # Safety
/// `dest` and `src` must be valid for `n` bytes and must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; DF is clear (boot code and
    // the ABI), so `rep movsb` copies forwards exactly `n` bytes.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `dest` and `src` must be valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // Forward copy is safe: dest is below src or the ranges are disjoint.
        // SAFETY: as for memcpy; forward order never reads a byte already overwritten.
        return unsafe { memcpy(dest, src, n) };
    }
    if n == 0 {
        return dest;
    }
    // SAFETY: dest lies inside (src, src + n): copying backwards from the last
    // byte reads each source byte before it is overwritten. DF is set only for
    // this instruction and cleared again, as the ABI requires.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// # Safety
/// `dest` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; `rep stosb` fills forwards
    // (DF clear) exactly `n` bytes with the low byte of `c`, as C specifies.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n and the caller guarantees n readable bytes behind each pointer.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
