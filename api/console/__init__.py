"""The browser console of ``hcp api``: an operations page, a device page, a customer page.

Pages are server-rendered HTML shells (Jinja2); everything they show comes from the public
v1 endpoints and SSE streams, fetched by the browser with the key the user signed in with.
The libraries are maintained ones, pinned in ``package-lock.json`` and installed by
``make console-assets`` (``npm ci``): Alpine.js binds the data to the page, uPlot draws
the charts. ``static/console.js`` only says what to fetch and where it goes.

Signing in checks the key like any request and keeps it in an HttpOnly, SameSite=Strict
cookie (``api.auth.KEY_COOKIE``), which the v1 routes accept as well as a bearer header:
``EventSource`` cannot send headers.
"""

from __future__ import annotations

from api.console.routes import mount_console

__all__ = ["mount_console"]
