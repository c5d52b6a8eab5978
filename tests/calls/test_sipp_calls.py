"""SIPp through an Out dialplan to a SIPp UAS registered as an account."""

from __future__ import annotations

from pathlib import Path

from tests.calls.helpers import PASSWORD, provision, running_server, wait_rows
from tests.calls.sipp import sipp_register, stat_totals, uac, uas
from tests.conftest import free_port, require_tool


async def test_sipp_thousand_calls_through_out_dialplan(tmp_path: Path) -> None:
    require_tool("sipp")
    # With the default limits: one customer placing 50 calls/s keeps well under one
    # execution in flight, so the cap of 5 concurrent executions (whose sixth caller
    # gets 480; tested in test_loops_limits.py) must never be reached.  A stall of
    # ~100 ms would reach it, as collector pauses once did.
    async with running_server(tmp_path) as server:
        assert server.sip_address is not None
        provision(
            server,
            accounts={"sipp": (None, "out"), "bob": (None, None)},
            dialplans={"out": 'sys.Dial("%s@local" % req.URI.User)\n'},
        )
        uas_port = free_port()
        await sipp_register(tmp_path, server.sip_address, "bob", PASSWORD, uas_port)
        callee = await uas(tmp_path, uas_port).start()
        caller = await uac(tmp_path, server.sip_address, service="bob", user="sipp", password=PASSWORD,
                           calls=1000, rate=50).start()
        try:
            code = await caller.wait(within=90)
        finally:
            await caller.stop()
            await callee.stop()
        totals = stat_totals(tmp_path)
        assert code == 0, caller.output()[-3000:]
        assert totals["SuccessfulCall(C)"] == "1000"
        assert totals["FailedCall(C)"] == "0"
        # Every call was bridged and hung up: two CDR rows each sharing a bridge id.
        rows = await wait_rows(server, "SELECT bridge_id FROM cdrs WHERE hungup_at IS NOT NULL AND bridge_id IS NOT NULL",
                               2000, within=20)
        assert len({r[0] for r in rows}) == 1000
