"""Console pages, sign-in and the pinned browser libraries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.auth import KEY_COOKIE, Principal

__all__ = ["VENDOR", "mount_console"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
MODULES = HERE / "node_modules"
# What the pages load from the npm packages (package-lock.json pins their versions).
VENDOR = {
    "alpine.js": MODULES / "alpinejs" / "dist" / "cdn.min.js",
    "uplot.js": MODULES / "uplot" / "dist" / "uPlot.iife.min.js",
    "uplot.css": MODULES / "uplot" / "dist" / "uPlot.min.css",
}
HOME = {"admin": "/console/ops", "customer": "/console/customer"}

router = APIRouter(prefix="/console", include_in_schema=False)


async def _principal(request: Request) -> Principal | None:
    key = request.cookies.get(KEY_COOKIE)
    if not key:
        return None
    try:
        return await request.app.state.services.keys.lookup(key)
    except Exception as exc:  # PostgreSQL away: the sign-in page says so
        log.warning("console sign-in check failed: %s", type(exc).__name__)
        return None


def _signin(request: Request, error: str | None = None, status: int = 200) -> Response:
    return TEMPLATES.TemplateResponse(
        request, "signin.html", {"error": error, "next": request.query_params.get("next", "")},
        status_code=status,
    )


async def _page(request: Request, template: str, role: str, **context: object) -> Response:
    principal = await _principal(request)
    if principal is None:
        return RedirectResponse(f"/console/?next={quote(request.url.path)}", status_code=303)
    if role == "admin" and not principal.is_admin:
        return RedirectResponse(HOME[principal.role], status_code=303)
    return TEMPLATES.TemplateResponse(
        request, template, {"principal": principal, **context}
    )


@router.get("/", response_class=HTMLResponse)
async def signin_page(request: Request) -> Response:
    principal = await _principal(request)
    if principal is not None:
        return RedirectResponse(HOME[principal.role], status_code=303)
    return _signin(request)


@router.post("/session")
async def sign_in(
    request: Request, key: Annotated[str, Form(max_length=200)], next: Annotated[str, Form()] = ""
) -> Response:
    try:
        principal = await request.app.state.services.keys.lookup(key.strip())
    except Exception as exc:
        log.warning("console sign-in failed: %s", type(exc).__name__)
        return _signin(request, "The key store (PostgreSQL) is unreachable; try again.", 503)
    if principal is None:
        return _signin(request, "Unknown or revoked API key.", 401)
    target = next if next.startswith("/console/") and principal.is_admin else HOME[principal.role]
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        KEY_COOKIE, key.strip(), httponly=True, samesite="strict", path="/",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def sign_out() -> Response:
    response = RedirectResponse("/console/", status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/")
    return response


@router.get("/ops", response_class=HTMLResponse)
async def operations(request: Request) -> Response:
    return await _page(request, "ops.html", "admin")


@router.get("/device/{device_id}", response_class=HTMLResponse)
async def device(request: Request, device_id: str) -> Response:
    return await _page(request, "device.html", "admin", device_id=device_id)


@router.get("/customer", response_class=HTMLResponse)
async def customer(request: Request) -> Response:
    return await _page(request, "customer.html", "customer")


@router.get("/usage", response_class=HTMLResponse)
async def usage(request: Request) -> Response:
    return await _page(request, "usage.html", "customer")


@router.get("/vendor/{name}")
async def vendor(name: str) -> Response:
    path = VENDOR.get(name)
    if path is None or not path.is_file():
        return Response(f"console asset {name!r} missing: run `make console-assets`", 404)
    return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


def mount_console(app: FastAPI) -> None:
    """Serve the console under ``/console`` of ``app``."""
    missing = [name for name, path in VENDOR.items() if not path.is_file()]
    if missing:
        log.warning("console libraries missing (%s): run `make console-assets`", ", ".join(missing))
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
