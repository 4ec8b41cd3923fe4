"""The reference of ``hcp bench api``: the plainest FastAPI app that serves a device.

One async Redis ``HGETALL`` per request, no auth, no read model: what "put FastAPI in
front of Redis" gives on this machine. Served by the same uvicorn (uvloop, httptools) as
``hcp api``::

    HCP_REDIS_URL=... HCP_REDIS_PREFIX=... python -m uvicorn tools.bench.api_reference:app
"""

from __future__ import annotations

import os

import redis.asyncio as aredis
from fastapi import FastAPI, HTTPException

app = FastAPI()
_client = aredis.Redis.from_url(
    os.environ.get("HCP_REDIS_URL", "redis://127.0.0.1:6379/0"), decode_responses=True
)
_prefix = os.environ.get("HCP_REDIS_PREFIX", "hcp:")


@app.get("/api/v1/resources/{device_id}")
async def resource(device_id: str) -> dict[str, str]:
    doc = await _client.hgetall(f"{_prefix}rec:{device_id}")
    if not doc:
        raise HTTPException(404)
    return doc
