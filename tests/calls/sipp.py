"""Running SIPp from tests: register a SIPp UAS as an account, run a UAS and a UAC,
and read what SIPp reports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from tests.conftest import SHARED, free_port, require_tool

SCENARIOS = SHARED / "sipp"


async def sipp_register(workdir: Path, server: tuple[str, int], user: str, password: str, port: int) -> None:
    """REGISTER ``user`` from 127.0.0.1:``port`` with SIPp's digest (reg_auth.xml)."""
    sipp = require_tool("sipp")
    users = workdir / f"register-{user}.csv"
    users.write_text(f"SEQUENTIAL\n{user};[authentication username={user} password={password}]\n")
    with trio.fail_after(15):
        result = await trio.run_process(
            [sipp, "-sf", str(SCENARIOS / "reg_auth.xml"), "-inf", str(users), f"{server[0]}:{server[1]}",
             "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin", "-timeout", "10s"],
            cwd=workdir, capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]


class SippProcess:
    """One SIPp process; stop() ends it by its PID and returns its exit code."""

    def __init__(self, workdir: Path, name: str, args: list[str]) -> None:
        self.workdir = workdir
        self.name = name
        self.args = [require_tool("sipp"), *args]
        self.process: trio.Process | None = None
        self.log = workdir / f"{name}.out"

    async def start(self) -> SippProcess:
        with self.log.open("wb") as out:
            self.process = await trio.lowlevel.open_process(
                self.args, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    async def wait(self, within: float) -> int:
        assert self.process is not None
        with trio.fail_after(within):
            return await self.process.wait()

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.terminate()
            with trio.move_on_after(3):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def uas(workdir: Path, port: int, scenario: str = "uas_rr.xml") -> SippProcess:
    return SippProcess(workdir, f"uas-{port}", [
        "-sf", str(SCENARIOS / scenario) if "/" not in scenario else scenario,
        "-i", "127.0.0.1", "-p", str(port), "-nostdin", "-aa", "-trace_err",
    ])


def uac(workdir: Path, server: tuple[str, int], *, service: str, user: str, password: str, calls: int, rate: int,
        extra: list[str] | None = None) -> SippProcess:
    return SippProcess(workdir, "uac", [
        "-sf", str(SCENARIOS / "uac_proxy.xml"), "-s", service, f"{server[0]}:{server[1]}",
        "-i", "127.0.0.1", "-p", str(free_port()), "-au", user, "-ap", password,
        "-m", str(calls), "-r", str(rate), "-nostdin", "-trace_stat", "-fd", "1", "-trace_err",
        *(extra or []),
    ])


def stat_totals(workdir: Path) -> dict[str, str]:
    """The last line of SIPp's -trace_stat CSV as a dict (cumulative counters)."""
    files = sorted(workdir.glob("*_.csv"))
    assert files, "SIPp wrote no statistics file"
    lines = [line for line in files[-1].read_text().splitlines() if line.strip()]
    header = lines[0].split(";")
    last = lines[-1].split(";")
    return dict(zip(header, last, strict=False))
