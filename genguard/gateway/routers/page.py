"""The reviewer page: GET / and its static files (genguard/gateway/static/), no API key needed to load them.

The page is plain HTML, CSS and JavaScript (no build step, no third-party code) and calls this gateway's
own keyed API (`GET /v1/models`, `POST /v1/detect`, `GET /v1/jobs`) with the key the reviewer types in. Every answer of
these routes carries a strict Content-Security-Policy: scripts and styles from this origin only (no
inline script), requests to this origin only, images from this origin and the page's own blob: URLs
(thumbnails of the files being reviewed), no frames, no forms posting elsewhere.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from ..errors import ApiError

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "font-src 'none'; object-src 'none'; media-src blob:; frame-src 'none'; worker-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
# The only files served (no path from the request reaches the file system).
FILES = {"app.js": "text/javascript; charset=utf-8", "jobs.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
         "favicon.svg": "image/svg+xml"}

router = APIRouter(include_in_schema=False)


def _read(name: str) -> bytes:
    return resources.files("genguard.gateway").joinpath("static", name).read_bytes()


@router.get("/")
async def page() -> Response:
    """The reviewer page."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in FILES:
        raise ApiError(404, "not_found", f"no static file {name!r}: the page's files are {', '.join(sorted(FILES))}")
    return Response(_read(name), media_type=FILES[name], headers=HEADERS)
