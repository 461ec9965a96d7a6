"""The phone client (SPEC §12) served by `stepbatch serve`: the page at `/`, its bundle under `/app/`.

The bundle is built from `web/` by `scripts/build-web` into the virtualenv's
`share/stepbatch/web` (or `$STEPBATCH_WEB_DIR`); it is not in git. Where it was not built, `/`
says so instead of failing. The page holds a private key, so every response of it carries a
Content-Security-Policy that admits scripts, styles and connections from this origin only (a
script injected from elsewhere could not run, nor send the key anywhere), and refuses framing,
sniffing and referrers. `STEPBATCH_TILE_URL` (a Leaflet tile template such as
`https://{s}.tile.example.org/{z}/{x}/{y}.png`) adds a raster basemap and its origin to `img-src`;
without it the map draws the triangles over a plain background.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import sys

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stepbatch.service.responses import JSON

log = logging.getLogger("stepbatch.service")

# A Leaflet tile template's scheme and host; `{s}` (Leaflet's subdomains) may stand first in the host.
_TILE_URL = re.compile(r"^(https?)://((?:\{s\}\.)?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?)/\S*$")

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>STEP: the phone client was not built</title></head>
<body><h1>The phone client was not built</h1>
<p>This stepbatch serves the STEP API, but its web client was not found in {directory}.</p>
<p>Build it with <code>scripts/build-web</code> (it needs Node.js and npm; <code>scripts/bootstrap</code> runs it),
or point <code>STEPBATCH_WEB_DIR</code> at a built copy, then reload this page.</p></body></html>
"""


@dataclasses.dataclass(frozen=True)
class Site:
    """Where the bundle is and which basemap the page draws."""

    directory: pathlib.Path
    tile_url: str | None = None
    tile_attribution: str | None = None

    @classmethod
    def from_env(cls) -> Site:
        """`$STEPBATCH_WEB_DIR`, else the virtualenv's share/stepbatch/web; `$STEPBATCH_TILE_URL` and
        `$STEPBATCH_TILE_ATTRIBUTION`. A tile URL a policy cannot name is left out, with a warning."""
        configured = os.environ.get("STEPBATCH_WEB_DIR")
        directory = pathlib.Path(configured) if configured else pathlib.Path(sys.prefix) / "share" / "stepbatch" / "web"
        template = os.environ.get("STEPBATCH_TILE_URL", "").strip() or None
        if template:
            try:
                tile_origin(template)
            except ValueError as err:
                log.warning("%s; the map is drawn without tiles", err)
                template = None
        return cls(directory, template, os.environ.get("STEPBATCH_TILE_ATTRIBUTION") or None)

    @property
    def built(self) -> bool:
        return (self.directory / "index.html").is_file()

    def headers(self, request: Request) -> dict[str, str]:
        """The headers of every response of the page and its bundle."""
        images = " ".join(["'self'", "data:", *([tile_origin(self.tile_url)] if self.tile_url else [])])
        headers = {
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'self'; style-src 'self'; "
                f"img-src {images}; connect-src 'self'; manifest-src 'self'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Permissions-Policy": "geolocation=(self), camera=(), microphone=(), payment=(), usb=()",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin",
            # Revalidated on every load (ETag), so a phone never keeps running an old bundle.
            "Cache-Control": "no-cache",
        }
        if request.url.scheme == "https":
            headers["Strict-Transport-Security"] = "max-age=31536000"
        return headers


def tile_origin(template: str) -> str:
    """The CSP source of a tile template's host (`https://*.tile.example.org` for `{s}`); ValueError
    when the template is not an http(s) URL that a CSP source can name."""
    match = _TILE_URL.match(template)
    if not match:
        raise ValueError(f"STEPBATCH_TILE_URL must be an http(s) tile URL template such as "
                         f"https://tile.example.org/{{z}}/{{x}}/{{y}}.png, got {template[:120]!r}")
    return f"{match[1]}://{match[2].replace('{s}', '*')}"


class _Bundle(StaticFiles):
    """The built files, each answered with the page's headers."""

    def __init__(self, site: Site):
        super().__init__(directory=site.directory, check_dir=False)
        self.site = site

    async def check_config(self) -> None:
        # A bundle that was not built is answered at `/` with words, and with 404 here.
        return None

    def file_response(self, full_path, stat_result, scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(self.site.headers(Request(scope)))
        return response


def routes(site: Site) -> list:
    """`/` (the page, or words saying it was not built), `/app/settings.json` and the bundle under `/app/`."""

    def index(request: Request) -> Response:
        if not site.built:
            return HTMLResponse(NOT_BUILT.format(directory=site.directory), 503, headers=site.headers(request))
        return FileResponse(site.directory / "index.html", headers=site.headers(request))

    def settings(request: Request) -> Response:
        """What the page needs to know about this server beyond the API: the basemap, if any."""
        return JSON({"tileUrl": site.tile_url, "tileAttribution": site.tile_attribution, "built": site.built},
                    headers=site.headers(request))

    return [Route("/", index, methods=["GET", "HEAD"]), Route("/app/settings.json", settings),
            Mount("/app", app=_Bundle(site), name="web")]


ROUTES = routes(Site.from_env())
