"""Interactive API docs at ``/docs``: Swagger UI, served from the installed package.

The assets come from the ``swagger-ui-bundle-v2`` distribution (a dependency of the
``asgi`` extra), so nothing is fetched from a CDN and the page works offline. The page
has no inline script (it runs under ``script-src 'self'``): ``static/docs-init.js`` reads
the document's URL from a data attribute and starts Swagger UI. Every URL is built from
``root_path``, so the page works under any mount prefix; the *Authorize* button takes
the bearer token when the app has auth.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from .errors import ApiError

__all__ = ["DOCS_CSP", "docs_routes"]

#: Swagger UI sets style attributes, hence 'unsafe-inline' for styles only; no inline script.
DOCS_CSP: Final = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

#: The files of the Swagger UI distribution the page loads (nothing else is served).
_ASSETS: Final = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>asyncjobs API</title>
  <link rel="icon" href="{assets}/favicon-32x32.png">
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <script src="{assets}/swagger-ui-bundle.js" defer></script>
  <script src="{assets}/swagger-ui-standalone-preset.js" defer></script>
  <script src="{assets}/init.js" defer></script>
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{openapi}"></div>
  <noscript>The interactive docs need JavaScript; the document is at
    <a href="{openapi}">{openapi}</a>.</noscript>
</body>
</html>
"""


def _swagger_dir() -> Path:
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
    except ImportError:
        raise ApiError(
            404,
            "docs_missing",
            "the interactive docs need swagger-ui-bundle-v2: pip install 'asyncjobs[asgi]'",
        ) from None
    return Path(str(swagger_ui_path))


def docs_routes(static_dir: Path) -> list[BaseRoute]:
    """``GET /docs`` and ``GET /docs/assets/{name}``.

    Args:
        static_dir: Where ``docs-init.js`` lives (the dashboard's static directory).
    """

    async def page(request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        _swagger_dir()  # a clear 404 now rather than a blank page
        body = _PAGE.format(
            assets=html.escape(f"{root}/docs/assets"), openapi=html.escape(f"{root}/openapi.json")
        )
        return HTMLResponse(
            body, headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"}
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "init.js":
            path, media = static_dir / "docs-init.js", "text/javascript"
        elif name in _ASSETS:
            path, media = _swagger_dir() / name, _ASSETS[name]
        else:
            raise ApiError(404, "not_found", f"no docs asset named {name!r}")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    return [
        Route("/docs", page, methods=["GET"]),
        Route("/docs/assets/{name}", asset, methods=["GET"]),
    ]
