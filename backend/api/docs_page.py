"""The API's documentation pages, working offline: Swagger UI and ReDoc load their scripts from the files the
`fastapi-offline` package ships (never from a CDN)."""

from __future__ import annotations

import html
from pathlib import Path

import fastapi_offline

ASSETS = "/docs-assets"
STATIC = Path(fastapi_offline.__file__).parent / "static"
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
TITLE = "Stable Diffusion web UI API"


def asset(name: str) -> Path | None:
    """One of the shipped files by name; nothing else is ever served from here."""
    return STATIC / name if name in FILES else None


def swagger_html(root: str) -> str:
    base = html.escape(root + ASSETS)
    spec = html.escape(root + "/openapi.json")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{TITLE}</title>
<link rel="icon" href="{base}/favicon.png"><link rel="stylesheet" href="{base}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{base}/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", deepLinking: true}});</script>
</body></html>"""


def redoc_html(root: str) -> str:
    base = html.escape(root + ASSETS)
    spec = html.escape(root + "/openapi.json")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{TITLE}</title><link rel="icon" href="{base}/favicon.png"></head>
<body><redoc spec-url="{spec}"></redoc><script src="{base}/redoc.standalone.js"></script></body></html>"""
