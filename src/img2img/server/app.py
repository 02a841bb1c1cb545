"""The FastAPI application: settings, store, runner and event hub joined; errors as JSON; limits on bodies.

``run`` serves it with uvicorn and tells it when a stop begins (SIGTERM, Ctrl-C), so that waiting A1111 calls
and event streams end at once instead of holding the shutdown; the running job goes back to the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from img2img.jobs.blobs import BlobStore
from img2img.jobs.book import JobRunner
from img2img.jobs.runner import Runner
from img2img.jobs.store import JobStore
from img2img.jobs.worker import make_engine
from img2img.server import (
    a1111,
    a1111_controlnet,
    a1111_extras,
    a1111_lists,
    control_routes,
    describe_routes,
    native,
    studio,
)
from img2img.server.events import EventHub
from img2img.server.service import ApiError, Service
from img2img.server.settings import LOCAL_HOSTS, ServerSettings

log = logging.getLogger("img2img.server")
BASE64_OVERHEAD = 4 / 3
GRACEFUL_SHUTDOWN_S = 10  # uvicorn's wait for open connections; ours end as soon as the stop begins


def run(settings: ServerSettings) -> None:
    """Serve until SIGTERM or Ctrl-C; then stop in a few seconds with one log line and nothing lost."""
    import uvicorn

    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            svc: Service | None = getattr(app.state, "service", None)
            if svc is not None:
                svc.begin_stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    Server(config).run()


def _runner(settings: ServerSettings, store: JobStore, blobs: BlobStore, hub: EventHub) -> JobRunner:
    """The local worker process, or Ray actors with ``--ray`` (Ray is imported only then)."""
    if settings.ray is None:
        return Runner(settings, store, blobs, hub)
    from img2img.cluster.dispatch import RayRunner

    return RayRunner(settings, store, blobs, hub)


def create_app(settings: ServerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = JobStore(settings.database)
        requeued, failed = store.recover(settings.max_attempts)
        if requeued or failed:
            log.warning("restart: %d interrupted jobs queued again, %d failed after too many attempts",
                        requeued, failed)
        blobs = BlobStore(settings.data_dir / "images")
        hub = EventHub(asyncio.get_running_loop())
        runner = _runner(settings, store, blobs, hub)
        runner.start()  # the workers start while this process makes its own engine for checks
        planner = await asyncio.to_thread(make_engine, settings)
        app.state.service = Service(settings, store, blobs, hub, runner, planner)
        # Fixed now, for the server's life: keys stay required when the last one is removed (fail closed).
        app.state.keys_required = store.has_keys() or settings.host not in LOCAL_HOSTS
        try:
            yield
        finally:
            began = time.monotonic()
            await asyncio.to_thread(runner.stop)
            waiting = store.counts().get("queued", 0)
            put_back = f"job {runner.put_back} went back to the queue; " if runner.put_back else ""
            log.info("stopped in %.1f s: %s%d queued jobs wait for the next start", time.monotonic() - began,
                     put_back, waiting)
            store.close()

    app = FastAPI(title="img2img", summary="Image-to-image generation: a job queue, the native API and the "
                  "A1111-compatible API", lifespan=lifespan)
    app.include_router(native.router)
    app.include_router(a1111.router)
    app.include_router(a1111_lists.router)
    app.include_router(a1111_extras.router)
    app.include_router(control_routes.router)
    app.include_router(a1111_controlnet.router)
    app.include_router(describe_routes.native)
    app.include_router(describe_routes.a1111)
    studio.mount(app)
    _errors(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    limit = int(settings.max_upload_bytes * BASE64_OVERHEAD) + 64 * 1024  # base64 in JSON, plus the fields
    app.add_middleware(BodyLimit, limit=limit)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0]
        if first.get("type") == "json_invalid":
            detail = first.get("ctx", {}).get("error", "not JSON")
            message = f"body should be valid JSON, but it is not ({detail} at position {first['loc'][-1]})"
            return JSONResponse(ApiError(422, "invalid_request", message, "body").body(), status_code=422)
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "form")]
        field = ".".join(location) or "body"
        if field == "body" and first.get("type") == "missing":
            message = "body should be a JSON object with the request's fields, but it was empty"
            return JSONResponse(ApiError(422, "invalid_request", message, field).body(), status_code=422)
        received = first.get("input")
        shown = repr(received) if not isinstance(received, dict | list) else type(received).__name__
        message = f"{field}: {first.get('msg', 'invalid').lower()} (got {shown[:80]})"
        return JSONResponse(ApiError(422, "invalid_request", message, field).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return JSONResponse(ApiError(exc.status_code, code, str(exc.detail)).body(), status_code=exc.status_code)


class BodyLimit:
    """413 for a request body over ``limit`` bytes, by Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        received = 0
        refused = False

        async def limited() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # a body streamed in chunks, with no Content-Length to refuse it by
                refused = True
                await self._refuse(send)
                return {"type": "http.disconnect"}  # the app stops reading; what it answers is dropped
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded)

    async def _refuse(self, send: Send) -> None:
        error = ApiError(413, "too_large", f"the request body should be at most {self.limit} bytes", "body")
        body = JSONResponse(error.body(), status_code=413)
        await body({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
