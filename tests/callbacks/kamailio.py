"""A real Kamailio registrar for the provider-registration tests: registrar + usrloc in
memory, digest with one static password (``pv_www_authenticate``), and INVITEs to a
registered AoR forwarded to its contact (``lookup`` + ``t_relay``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.conftest import free_port, require_tool

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "xlog.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", {min_expires})
modparam("registrar", "max_expires", 3600)
request_route {{
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("$td", "{password}", "0")) {{
            www_challenge("$td", "0");
            exit;
        }}
        if ($au != "{user}") {{ sl_send_reply("403", "Forbidden"); exit; }}
        xlog("L_NOTICE", "REGISTERED $ct expires=$hdr(Expires) cseq=$cs\\n");
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    if (is_method("INVITE") && !has_totag()) {{
        if (!lookup("location")) {{ sl_send_reply("404", "Not registered"); exit; }}
    }}
    if (!t_relay()) {{ sl_reply_error(); }}
}}
"""

MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules", "/usr/local/lib64/kamailio/modules")


@dataclass
class Kamailio:
    address: tuple[str, int]
    log: Path

    def registrations(self) -> list[str]:
        """The REGISTER requests Kamailio accepted (its own log lines)."""
        return [line for line in self.log.read_text(errors="replace").splitlines() if "REGISTERED " in line]


def _module_dir() -> str | None:
    return next((d for d in MODULE_DIRS if os.path.exists(os.path.join(d, "registrar.so"))), None)


@asynccontextmanager
async def kamailio_registrar(
    tmp_path: Path, *, user: str, password: str, min_expires: int = 10
) -> AsyncIterator[Kamailio]:
    """Run Kamailio in the foreground on a free loopback port; stop it by its PID."""
    exe = require_tool("kamailio")
    modules = _module_dir()
    assert modules is not None, "Kamailio's modules directory was not found"
    port = free_port()
    config = tmp_path / "kamailio.cfg"
    config.write_text(CONFIG.format(port=port, modules=modules + "/", password=password, user=user,
                                    min_expires=min_expires))
    run = tmp_path / "kamailio-run"
    run.mkdir(exist_ok=True)
    log = tmp_path / "kamailio.log"
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [exe, "-f", str(config), "-DD", "-E", "-Y", str(run), "-m", "64"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )
    try:
        await _wait_ready(("127.0.0.1", port), process, log)
        yield Kamailio(address=("127.0.0.1", port), log=log)
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(5) as waited:
            await process.wait()
        if waited.cancelled_caught:
            process.kill()
            with trio.fail_after(5):
                await process.wait()


async def _wait_ready(address: tuple[str, int], process: trio.Process, log: Path) -> None:
    """Ask with OPTIONS until Kamailio answers (its first answer takes 30-200 ms)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    local = sock.getsockname()
    probe = (
        f"OPTIONS sip:{address[0]}:{address[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bKready{local[1]}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:{address[0]}>\r\nCall-ID: ready-{local[1]}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with sock, trio.fail_after(10):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"kamailio exited ({process.returncode}); see {log}")
            await sock.sendto(probe, address)
            with trio.move_on_after(0.2):
                data = await sock.recv(65535)
                if data.startswith(b"SIP/2.0 200"):
                    return
