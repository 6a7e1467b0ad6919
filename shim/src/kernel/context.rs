//! Saving the point the restored process resumes from.
//!
//! `remus_checkpoint(ctx, f)` stores the callee-saved registers, the stack pointer as it will
//! be after the return, and the return address into `ctx`, calls `f(ctx)` and returns 0. On
//! the standby, restore sets exactly those registers, `rax = 1` and `fs_base`, and lets the
//! thread run: to the caller it looks as if `remus_checkpoint` returned 1. Rust never sees two
//! returns in one process, so no `returns_twice` is needed; the caller only relies on the
//! callee-saved registers and on its own frame, which lies above the saved stack pointer and
//! is in the image.

use remus_abi::ResumeContext;

core::arch::global_asm!(
    ".text",
    ".globl remus_checkpoint",
    ".hidden remus_checkpoint",
    ".type remus_checkpoint,@function",
    "remus_checkpoint:",
    "mov [rdi + 0], rbx",
    "mov [rdi + 8], rbp",
    "mov [rdi + 16], r12",
    "mov [rdi + 24], r13",
    "mov [rdi + 32], r14",
    "mov [rdi + 40], r15",
    "lea rax, [rsp + 8]",
    "mov [rdi + 48], rax",
    "mov rax, [rsp]",
    "mov [rdi + 56], rax",
    // Keep the stack 16-byte aligned for the call; rdi still holds ctx.
    "push rbx",
    "call rsi",
    "pop rbx",
    "xor eax, eax",
    "ret",
    ".size remus_checkpoint, .-remus_checkpoint",
);

extern "C" {
    fn remus_checkpoint(ctx: *mut ResumeContext, f: extern "C" fn(*mut ResumeContext)) -> u64;
}

const _: () = {
    assert!(core::mem::offset_of!(ResumeContext, rbx) == 0);
    assert!(core::mem::offset_of!(ResumeContext, r15) == 40);
    assert!(core::mem::offset_of!(ResumeContext, rsp) == 48);
    assert!(core::mem::offset_of!(ResumeContext, rip) == 56);
};

/// Saves the resume point into `ctx`, then runs `f(ctx)`. Returns `false` when `f` ran here,
/// `true` when this is the restored process resuming on the standby.
pub fn checkpoint(ctx: &mut ResumeContext, f: extern "C" fn(*mut ResumeContext)) -> bool {
    // SAFETY: `remus_checkpoint` follows the SysV ABI: it writes only `*ctx` (valid, exclusive)
    // and preserves callee-saved registers; `f` is a valid function taking that pointer.
    unsafe { remus_checkpoint(ctx, f) != 0 }
}
