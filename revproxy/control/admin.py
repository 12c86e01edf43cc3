"""The admin server: status page, JSON API, metrics, health and readiness.

GET  /                 the status page
GET  /api/status       the same state as JSON
POST /api/servers/{pool}/{server}/{enable|disable|drain}
POST /api/reload       ask the main process to reload, answer with the result
GET  /metrics          Prometheus text
GET  /healthz          200 while the control process runs
GET  /readyz           200 once workers listen with a loaded configuration, else 503

Actions (POST) need `Authorization: Bearer <token>`, the token being the content
of the configured token_file (read on each request, so it can be rotated); with
no token_file they are refused outright.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from revproxy.config.model import AdminConfig
from revproxy.control import metrics, page
from revproxy.control.view import ACTIONS, ControlView

log = logging.getLogger("revproxy.admin")

VIEW: web.AppKey[ControlView] = web.AppKey("view", ControlView)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


def check_token(admin: AdminConfig, authorization: str | None) -> tuple[int, str] | None:
    """None when the request may act; else (HTTP status, reason)."""
    if admin.token_file is None:
        return 403, "actions are disabled: the admin section has no token_file"
    try:
        expected = admin.token_file.read_bytes().strip()
    except OSError as exc:
        log.error("cannot read the admin token file: %s", exc)
        return 403, "actions are disabled: the token file cannot be read"
    if not expected:
        return 403, "actions are disabled: the token file is empty"
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "an Authorization: Bearer token is required"
    if not hmac.compare_digest(given.strip().encode(), expected):
        return 403, "wrong token"
    return None


class AdminServer:
    """The aiohttp application and its site, restarted when its address changes."""

    def __init__(
        self,
        view: ControlView,
        reload: Callable[[], Awaitable[dict[str, Any]]],
        changed: Callable[[], None],
    ) -> None:
        self.view = view
        self._reload = reload
        self._changed = changed
        self._registry = metrics.build_registry(view)
        self._runner: web.AppRunner | None = None
        self.bound: AdminConfig | None = None
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def apply(self, admin: AdminConfig) -> None:
        """Start, stop or move the server to match `admin`."""
        if self.bound is not None and (
            not admin.enabled or (admin.host, admin.port) != (self.bound.host, self.bound.port)
        ):
            await self.stop()
        if admin.enabled and self._runner is None:
            await self._start(admin)
        self.bound = admin if admin.enabled else None

    async def _start(self, admin: AdminConfig) -> None:
        app = web.Application()
        app[VIEW] = self.view
        app.router.add_get("/", self.status_page)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_post("/api/servers/{pool}/{server}/{action}", self.api_server)
        app.router.add_post("/api/reload", self.api_reload)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, admin.host, admin.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error("admin server cannot listen on %s:%d: %s", admin.host, admin.port, exc)
            await runner.cleanup()
            return
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.address = (host, port)
        log.info("admin on %s:%d", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.address = None
        self.bound = None

    # ------------------------------------------------------------------ handlers

    async def status_page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=page.render(self.view.status()),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def api_status(self, request: web.Request) -> web.Response:
        return _json(self.view.status())

    def _refused(self, request: web.Request) -> web.Response | None:
        refusal = check_token(self.view.config.admin, request.headers.get("Authorization"))
        if refusal is None:
            return None
        status, reason = refusal
        log.warning("admin action %s refused: %s", request.path, reason)
        headers = {"WWW-Authenticate": 'Bearer realm="revproxy"'} if status == 401 else {}
        return web.json_response({"error": reason}, status=status, headers=headers)

    async def api_server(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        pool = request.match_info["pool"]
        server = request.match_info["server"]
        action = request.match_info["action"]
        if action not in ACTIONS:
            return _json({"error": f"unknown action {action!r}; use {sorted(ACTIONS)}"}, 404)
        try:
            state = self.view.set_admin(pool, server, action)
        except KeyError:
            return _json({"error": f"no server {server!r} in pool {pool!r}"}, 404)
        self._changed()
        return _json({"pool": pool, "server": server, "admin": state})

    async def api_reload(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        result = await self._reload()
        return _json(result, 200 if result.get("ok") else 422)

    async def metrics(self, request: web.Request) -> web.Response:
        body = metrics.render(self._registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.view.ready():
            return web.Response(text="ready\n")
        return web.Response(text="not ready\n", status=503)
