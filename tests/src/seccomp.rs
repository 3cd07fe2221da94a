//! Killing a child process at a chosen system call, for the kill tests: a
//! seccomp filter installed between fork and exec makes the process die
//! (SIGSYS, no handler runs, like SIGKILL) the first time it makes that call.

use std::process::Command;

/// Classic BPF opcodes of a seccomp filter.
pub const LD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
pub const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
pub const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// `seccomp_data.arch` of x86-64.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// One filter instruction.
pub fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Installs `filter` in `cmd`'s child between fork and exec (with
/// no_new_privs, so no privilege is needed for it).
pub fn install(cmd: &mut Command, filter: Vec<libc::sock_filter>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes two
    // prctl calls on memory (the filter) that the fork copied and that
    // stays valid until exec.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
