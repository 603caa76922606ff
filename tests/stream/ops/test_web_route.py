"""``GET /profiles/{id}`` finds every profile id a producer can send, braces included.

aiohttp's default ``{name}`` pattern excludes ``{`` and ``}``: a profile keyed by a GUID
written ``{3F2504E0-4F89-11D3-9A0C-0305E82C3301}`` got the router's plain-text 404 although
``customer-ai profile`` showed it. The route is checked on an aiohttp router alone (the
pattern the worker registers, no servers).
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stream.ops.web import PROFILE_ROUTE


async def _matched(ids: list[str]) -> list[tuple[int, str | None]]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"profile_id": request.match_info["profile_id"]})

    app = web.Application()
    app.router.add_get(PROFILE_ROUTE, handler)
    out: list[tuple[int, str | None]] = []
    async with TestClient(TestServer(app)) as client:
        for pid in ids:
            response = await client.get("/profiles/" + quote(pid, safe=""))
            body = await response.json() if response.status == 200 else None
            out.append((response.status, body and body["profile_id"]))
    return out


def test_profile_ids_with_braces_slashes_and_spaces_reach_the_view() -> None:
    ids = ["{3F2504E0-4F89-11D3-9A0C-0305E82C3301}", "a}b{c", "a/b", "x y", "ü-é", "p-42"]
    assert asyncio.run(_matched(ids)) == [(200, pid) for pid in ids]
