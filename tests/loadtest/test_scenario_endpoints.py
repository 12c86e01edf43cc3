"""The demo servers' load-test endpoints: NTLM per connection, long-poll hold and release."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp

from revproxy.demo.backends import LongPolls, start_backend

NTLM = "/WebTicket/WebTicketService.svc/Auth"


def _negotiate() -> str:
    return "NTLM " + base64.b64encode(b"NTLMSSP\x00" + (1).to_bytes(4, "little")).decode()


def _authenticate(challenge: str) -> str:
    nonce = base64.b64decode(challenge.split(" ", 1)[1])[24:32]
    raw = b"NTLMSSP\x00" + (3).to_bytes(4, "little") + nonce
    return "NTLM " + base64.b64encode(raw).decode()


def test_ntlm_handshake_belongs_to_its_connection() -> None:
    async def main() -> None:
        backend = await start_backend("127.0.0.1", 0, "fe1")
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as one,
                aiohttp.ClientSession(timeout=timeout) as other,
            ):
                url = f"{backend.url}{NTLM}"
                async with one.get(url) as r:
                    assert r.status == 401
                    assert r.headers.getall("WWW-Authenticate") == ["Negotiate", "NTLM"]
                async with one.get(url, headers={"Authorization": _negotiate()}) as r:
                    challenge = r.headers["WWW-Authenticate"]
                    assert r.status == 401 and challenge.startswith("NTLM ")
                answer = {"Authorization": _authenticate(challenge)}
                async with other.get(url, headers=answer) as r:
                    assert r.status == 401  # another connection: not authenticated
                async with one.get(url, headers=answer) as r:
                    assert r.status == 200
                async with one.get(url) as r:
                    assert r.status == 200  # the connection stays authenticated
        finally:
            await backend.close()

    asyncio.run(main())


def test_long_polls_are_held_and_released() -> None:
    async def main() -> None:
        backend = await start_backend("127.0.0.1", 0, "fe1", polls=LongPolls(hold=30))
        events = f"{backend.url}/ucwa/oauth/v1/applications/a/events?ack=1&timeout=20"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            started = time.monotonic()
            polls = [asyncio.create_task(session.get(events)) for _ in range(3)]
            deadline = time.monotonic() + 5
            while True:
                async with session.get(f"{backend.url}/_demo/held") as r:
                    if (await r.json())["held"] == 3:
                        break
                assert time.monotonic() < deadline, "the polls were not held"
                await asyncio.sleep(0.05)
            async with session.post(f"{backend.url}/_demo/release") as r:
                assert (await r.json())["released"] == 3
            for poll in polls:
                response = await poll
                assert response.status == 200
                assert (await response.json())["sender"]
                response.release()
            assert time.monotonic() - started < 10
            quick = f"{backend.url}/ucwa/oauth/v1/applications/a/events?timeout=0"
            async with session.get(quick) as r:
                assert r.status == 200 and (await r.json())["sender"] == []
            async with session.get(f"{backend.url}/abs/handler/F-1000.lsabs") as r:
                assert len(await r.read()) == 1024 * 1024
            async with session.get(f"{backend.url}/meet/abc") as r:
                assert "path: /meet/abc" in await r.text()  # the plain description stays
        await backend.close()

    asyncio.run(main())
