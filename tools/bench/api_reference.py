"""The reference of ``hcp bench api``: the plainest FastAPI app that serves a device.

One async Redis ``HGETALL`` per request, no auth, no read model: what "put FastAPI in
front of Redis" gives on this machine. Served by the same uvicorn (uvloop, httptools) as
``hcp api``::

    HCP_REDIS_URL=... HCP_REDIS_PREFIX=... python -m uvicorn tools.bench.api_reference:app
"""

from __future__ import annotations

import os

from fastapi import FastAPI, HTTPException

from hcp.redis_client import async_redis_client

app = FastAPI()
_client = async_redis_client(
    os.environ.get("HCP_REDIS_URL", "redis://127.0.0.1:6379/0"), decode_responses=True
)
_prefix = os.environ.get("HCP_REDIS_PREFIX", "hcp:")


@app.get("/api/v1/resources/{device_id}")
async def resource(device_id: str) -> dict[str, str]:
    doc = await _client.hgetall(f"{_prefix}rec:{device_id}")
    if not doc:
        raise HTTPException(404)
    return doc
