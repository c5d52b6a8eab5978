"""A webcallback URL on a real server runs the webcallback dialplan, which dials a SIPp
UAS registered as an account: the phone rings, answers, and the call is ended."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.calls.helpers import PASSWORD, provision, running_server, wait_rows
from tests.calls.sipp import SCENARIOS, SippProcess, sipp_register
from tests.conftest import free_port, require_tool

DIALPLAN = 'sys.Log("web call to %s" % req.URI.User)\nsys.Dial("%s@local" % req.URI.User)\n'


async def test_webcallback_dials_a_registered_sipp_uas(tmp_path: Path) -> None:
    require_tool("sipp")
    async with running_server(tmp_path) as server:
        assert server.sip_address is not None and server.http_address is not None
        provision(server, accounts={"acme": (None, None), "bob": (None, None)},
                  dialplans={"webcallback": DIALPLAN})
        uas_port = free_port()
        await sipp_register(tmp_path, server.sip_address, "bob", PASSWORD, uas_port)
        # One call, then SIPp exits 0 only if INVITE, ACK and BYE all came as scripted.
        callee = await SippProcess(tmp_path, "uas", [
            "-sf", str(SCENARIOS / "uas_rr.xml"), "-i", "127.0.0.1", "-p", str(uas_port),
            "-m", "1", "-nostdin", "-trace_err",
        ]).start()
        try:
            async with httpx.AsyncClient(base_url=server.http_address) as client:
                login = await client.post("/api/v1/login", json={"username": "acme", "password": PASSWORD})
                token = login.json()["token"]
                key = (await client.get("/api/v1/customer/webcallback-key",
                                        headers={"Authorization": f"Bearer {token}"})).json()["key"]
                wrong = await client.get("/webcallback/acme", params={"number": "bob", "key": "x" * len(key)})
                assert wrong.status_code == 403
                answer = await client.get("/webcallback/acme", params={"number": "bob", "key": key})
            assert answer.status_code == 200
            assert answer.text.strip() == "Web call was successfully initiated."
            assert await callee.wait(within=20) == 0, callee.output()[-2000:]
        finally:
            await callee.stop()
        traces = await wait_rows(server, "SELECT text FROM traces WHERE dialplan = 'webcallback'", 1)
        assert "DialPlan=> web call to bob" in traces[0][0]
        legs = await wait_rows(server, "SELECT status FROM cdrs WHERE leg = 'callee'", 1)
        assert legs[0][0] == 200
