"""The floor under the policy: the seccomp filter of worker processes (sandbox/seccomp.py)."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from sandbox import Outcome, SandboxPool, seccomp
from tests.sandbox.conftest import CONTEXT, REQUEST, RecordingHost

ARCH_X86_64 = 0xC000003E
ARCH_I386 = 0x40000003
ALLOW = 0x7FFF0000
EPERM = 0x00050000 | errno.EPERM

needs_seccomp = pytest.mark.skipif(not seccomp.supported(), reason="the filter is written for x86-64 Linux")


def seccomp_mode(pid: int) -> str:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Seccomp:"):
                return line.split()[1]
    return "?"


def verdict(nr: int, arch: int = ARCH_X86_64, arg1: int = 0) -> int:
    """Run the filter program the way the kernel would, for one system call."""
    data = {0: nr, 4: arch, 24: arg1 & 0xFFFFFFFF}
    accumulator = 0
    pc = 0
    program = seccomp.program()
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x20:  # load a word of seccomp_data
            accumulator = data[k]
            pc += 1
        elif code == 0x15:  # jump if equal
            pc += 1 + (jt if accumulator == k else jf)
        elif code == 0x35:  # jump if greater or equal
            pc += 1 + (jt if accumulator >= k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unknown instruction {code:#x}")


def test_the_program_refuses_every_listed_call_and_nothing_a_worker_needs() -> None:
    for name, nr in seccomp.DENIED_X86_64.items():
        assert verdict(nr) == EPERM, name
    # read, write, close, fstat, poll, lseek, mmap, mprotect, munmap, brk, rt_sigaction,
    # rt_sigprocmask, rt_sigreturn, select, getpid, setitimer, exit, clock_gettime,
    # exit_group, getrandom: what the worker lives on.
    for nr in (0, 1, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 23, 38, 39, 60, 228, 231, 318):
        assert verdict(nr) == ALLOW, nr
    # ioctl stays, except the requests that type into a terminal.
    assert verdict(16, arg1=0x5401) == ALLOW  # TCGETS
    assert verdict(16, arg1=0x5412) == EPERM  # TIOCSTI
    assert verdict(16, arg1=0x541C) == EPERM  # TIOCLINUX
    # Another ABI's numbers would mean other calls: refused outright.
    assert verdict(1, arch=ARCH_I386) == EPERM
    assert verdict(0x40000000 + 1) == EPERM  # x32's write


@needs_seccomp
def test_a_confined_process_opens_nothing_and_reaches_no_one() -> None:
    probe = r"""
import fcntl, os, socket, sys, termios
from sandbox import seccomp
assert seccomp.install()
for name, attempt in [
    ("open", lambda: open("/etc/hostname")),
    ("create", lambda: os.open("/tmp/dialspell-seccomp-probe", os.O_CREAT | os.O_WRONLY)),
    ("unlink", lambda: os.unlink("/tmp/dialspell-seccomp-probe")),
    ("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
    ("fork", os.fork),
    ("exec", lambda: os.execv("/bin/true", ["true"])),
    ("kill", lambda: os.kill(os.getppid(), 0)),
    ("type into a terminal", lambda: fcntl.ioctl(2, termios.TIOCSTI, b"x")),
]:
    try:
        attempt()
        print(name, "allowed")
    except PermissionError:
        print(name, "refused")
print("still running", os.getpid() > 0)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [
        "open refused", "create refused", "unlink refused", "socket refused", "fork refused",
        "exec refused", "kill refused", "type into a terminal refused", "still running True", "",
    ]


@needs_seccomp
async def test_pool_workers_serve_under_the_filter() -> None:
    async with SandboxPool(workers=1) as pool:
        (pid,) = pool.worker_pids()
        assert seccomp_mode(pid) == "2"  # SECCOMP_MODE_FILTER
        host = RecordingHost()
        # A non-ASCII identifier makes the parser import unicodedata: warmed up before.
        result = await pool.run('ｘ = "ok"\nsys.Log(x)\n', request=REQUEST, context=CONTEXT, host=host)
    assert result.outcome is Outcome.COMPLETED, result
    assert host.lines == ["ok"]
