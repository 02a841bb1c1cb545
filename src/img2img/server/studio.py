"""The web studio: static HTML, CSS and JavaScript modules shipped in the package, served at ``/``.

The page talks to the native API only; nothing is fetched from anywhere else, so it works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

FOLDER = Path(__file__).parent / "studio"
# A strict policy: our own scripts, styles and images only; images may also be blob: and data: URLs we make.
POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
          "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    return FileResponse(FOLDER / "index.html", headers={"Content-Security-Policy": POLICY,
                                                        "Cache-Control": "no-cache"})


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/studio", StaticFiles(directory=FOLDER), name="studio")
