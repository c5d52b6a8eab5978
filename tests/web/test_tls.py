"""HTTPS: the API and its session tokens over TLS (trustme certificates)."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from engine.web import WebConfig
from tests.web.conftest import PASSWORD, ServerOptions, start_web


async def test_api_works_over_https_and_the_token_is_accepted_there(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    options = ServerOptions(config=WebConfig(version="tls"), certfile=certfile, keyfile=keyfile)
    async with start_web(tmp_path, options, verify=context) as web:
        assert web.url.startswith("https://")
        web.add_customer("alice")
        async with web.client() as client:
            login = await client.post("/api/v1/login", json={"username": "alice", "password": PASSWORD})
            assert login.status_code == 200
            assert "Secure" in login.headers["set-cookie"]  # browsers send it over HTTPS only
            token = login.json()["token"]
        async with web.client(token) as client:
            me = await client.get("/api/v1/customer")
            assert me.status_code == 200 and me.json()["name"] == "alice"
            assert (await client.put("/api/v1/dialplans/main", json={"source": "x = 1\n"})).status_code == 201
