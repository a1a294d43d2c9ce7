"""Swagger UI under a strict Content-Security-Policy.

The page is rendered once; its inline scripts are allowed by their SHA-256 hashes
rather than by 'unsafe-inline', and only the CDN that serves Swagger UI may supply
scripts and styles.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_CDN = "https://cdn.jsdelivr.net"


def _csp_for(html: str) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src {_CDN} {hashes}; style-src {_CDN}; "
        "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


def _page(body: bytes | memoryview) -> HTMLResponse:
    html = bytes(body).decode()
    return HTMLResponse(html, headers={"Content-Security-Policy": _csp_for(html)})


def install_docs(app: FastAPI, openapi_url: str) -> None:
    redirect_url = "/docs/oauth2-redirect"
    docs_html = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{app.title} - API docs",
        oauth2_redirect_url=redirect_url,
        swagger_ui_parameters={"persistAuthorization": True},
    ).body
    redirect_html = get_swagger_ui_oauth2_redirect_html().body

    docs_page = _page(docs_html)
    redirect_page = _page(redirect_html)

    async def docs() -> HTMLResponse:
        return docs_page

    async def oauth2_redirect() -> HTMLResponse:
        return redirect_page

    app.get("/docs", include_in_schema=False)(docs)
    app.get(redirect_url, include_in_schema=False)(oauth2_redirect)
