"""A seccomp filter for worker processes: what code that got out of RestrictedPython
could still not do.

The policy (sandbox.policy, sandbox.guards) is the wall dialplans meet; this is the
floor under it.  Once a worker has warmed up, it needs nothing from the kernel but
its two pipes, memory, clocks, signals and its own exit, so the filter refuses with
EPERM every system call that would reach outside it:

* files: opening anything (open, openat, openat2, creat, open_by_handle_at), and
  changing the file system (unlink, rename, mkdir, link, symlink, chmod, chown,
  truncate, mknod...), so another customer's data or the server's database can be
  neither read nor damaged;
* the network and other processes: socket, socketpair, connect, bind, listen, accept;
  fork, vfork, clone, clone3, execve, execveat; kill, tkill, tgkill, ptrace,
  process_vm_readv/writev, pidfd_*; and raising or lowering anybody's limits or
  priority (prlimit64, setrlimit, setpriority, sched_set*, ioprio_set);
* kernel surfaces a worker never uses: io_uring (whose operations seccomp cannot
  see), bpf, perf_event_open, userfaultfd, keyrings, namespaces, mounts, modules;
* and the two ``ioctl`` requests that push input into a terminal (TIOCSTI,
  TIOCLINUX): a worker's standard error is the server's, which may be the
  operator's terminal, and typed-in input would run in the operator's shell.

A call under another ABI than the native one (``int 0x80`` on x86-64, or the x32
numbers) is refused too: its numbers would not mean what the list says.

It is a deny-list of numbers, so it is written for one architecture: x86-64, the one
this server is built and tested on.  Elsewhere :func:`install` returns False and the
worker runs without it (docs/sandbox.md).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

# <linux/audit.h>: AUDIT_ARCH_X86_64 = EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000

# x86-64 system call numbers (<asm/unistd_64.h>).
DENIED_X86_64: dict[str, int] = {
    # files
    "open": 2, "creat": 85, "openat": 257, "openat2": 437, "open_by_handle_at": 304,
    "name_to_handle_at": 303, "unlink": 87, "unlinkat": 263, "rename": 82, "renameat": 264,
    "renameat2": 316, "rmdir": 84, "mkdir": 83, "mkdirat": 258, "truncate": 76, "link": 86,
    "linkat": 265, "symlink": 88, "symlinkat": 266, "chmod": 90, "fchmodat": 268,
    "fchmodat2": 452, "chown": 92, "lchown": 94, "fchownat": 260, "mknod": 133, "mknodat": 259,
    "chroot": 161, "uselib": 134, "memfd_create": 319,
    # the network
    "socket": 41, "socketpair": 53, "connect": 42, "bind": 49, "listen": 50, "accept": 43,
    "accept4": 288,
    # processes
    "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "execve": 59, "execveat": 322,
    "kill": 62, "tkill": 200, "tgkill": 234, "ptrace": 101, "process_vm_readv": 310,
    "process_vm_writev": 311, "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
    "kcmp": 312, "prlimit64": 302, "setrlimit": 160, "setpriority": 141,
    "sched_setaffinity": 203, "sched_setscheduler": 144, "sched_setparam": 142,
    "ioprio_set": 251,
    # kernel surfaces
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
    "request_key": 249, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
    "pivot_root": 155, "swapon": 167, "swapoff": 168, "reboot": 169, "kexec_load": 246,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "acct": 163,
    "quotactl": 179, "fanotify_init": 300, "mq_open": 240,
}

_IOCTL = 16
# <asm-generic/ioctls.h>: fake input on a terminal, and the console's selection paste.
DENIED_IOCTLS = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}

# <linux/filter.h>, <linux/seccomp.h>, <linux/prctl.h>
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG1_LOW = 24  # seccomp_data.args[1], its low 32 bits (little-endian)

_INSTRUCTION = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


class _Program(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def program(denied: dict[str, int] = DENIED_X86_64) -> list[tuple[int, int, int, int]]:
    """The BPF instructions: (code, jt, jf, k) each; every denied call ends in EPERM."""
    numbers = sorted(set(denied.values()))
    deny = _SECCOMP_RET_ERRNO | errno.EPERM
    requests = sorted(DENIED_IOCTLS.values())
    # Layout: arch check; ioctl's request check; x32 check, one JEQ per number, ALLOW, DENY.
    body: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        (_RET_K, 0, 0, deny),
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
        # Not ioctl: on to the number checks, past this block.
        (_JEQ_K, 0, len(requests) + 3, _IOCTL),
        (_LD_W_ABS, 0, 0, _OFFSET_ARG1_LOW),
    ]
    for index, request in enumerate(requests):
        body.append((_JEQ_K, len(requests) - index, 0, request))  # to the DENY below
    body.append((_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    body.append((_RET_K, 0, 0, deny))
    checks = 1 + len(numbers)  # the x32 test, then the numbers
    for index in range(checks):
        to_deny = checks - index  # past the remaining checks and ALLOW
        if index == 0:
            body.append((_JGE_K, to_deny, 0, _X32_SYSCALL_BIT))
        else:
            body.append((_JEQ_K, to_deny, 0, numbers[index - 1]))
    body.append((_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    body.append((_RET_K, 0, 0, deny))
    return body


def supported() -> bool:
    return platform.system() == "Linux" and platform.machine() == "x86_64"


def install() -> bool:
    """Apply the filter to this process for good; False where it is not supported.

    Raises OSError if the kernel refuses it (then the worker must not serve)."""
    if not supported():
        return False
    code = b"".join(_INSTRUCTION.pack(*instruction) for instruction in program())
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _Program(len(code) // _INSTRUCTION.size, ctypes.cast(buffer, ctypes.c_char_p))
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    # Required to install a filter without privileges; also means exec can never gain any.
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return True
