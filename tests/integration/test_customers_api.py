"""Customer endpoints against a live app, PostgreSQL, Redis and the broker: usage and
invoices per customer (isolation), quotas (409), rate limits (429) and the audit trail."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from api.settings import ApiSettings
from hcp.kafka_admin import ensure_topics
from hcp.topics import Topics
from tests.support.apikit import LiveApi, make_key

pytestmark = pytest.mark.pg

HCP = str(Path(sys.executable).with_name("hcp"))
DAY1 = datetime(2026, 1, 5, tzinfo=UTC)
DAY2 = datetime(2026, 1, 6, tzinfo=UTC)


def _ms(d: datetime, minute: int = 0) -> int:
    return int(d.timestamp() * 1000) + minute * 60_000


USAGE = [  # workload, customer, minute ms, gpu_seconds, energy_wh, cost, charge
    ("wa1", "acme", _ms(DAY1, 0), 120.0, 10.0, 0.001, 0.05),
    ("wa1", "acme", _ms(DAY1, 1), 60.0, 5.0, 0.0005, 0.025),
    ("wa2", "acme", _ms(DAY2, 3), 3600.0, 400.0, 0.04, 2.0),
    ("wg1", "globex", _ms(DAY1, 0), 7200.0, 900.0, 0.09, 5.0),
]


@pytest.fixture(scope="module")
def env(bootstrap: str, redis_url: str, own_pg_dsn: str) -> Iterator[dict]:
    topics = Topics(prefix=f"c{uuid.uuid4().hex[:10]}.")
    ensure_topics(bootstrap, topics.all(), 2)
    with psycopg.connect(own_pg_dsn, autocommit=True) as conn:
        for wid, cust, minute, gs, wh, cost, charge in USAGE:
            conn.execute(
                "INSERT INTO usage_minutes VALUES (%s, to_timestamp(%s / 1000.0), %s, 'north',"
                " 'H100-SXM', 2, %s, %s, %s, 2.0, 2.0, %s, 6)",
                (wid, minute, cust, gs, wh, cost, charge))
    keys = {"admin": make_key(own_pg_dsn, "admin"),
            "acme": make_key(own_pg_dsn, "customer", "acme"),
            "globex": make_key(own_pg_dsn, "customer", "globex"),
            "burst": make_key(own_pg_dsn, "customer", "burst")}
    settings = ApiSettings(bootstrap=bootstrap, redis=redis_url, pg=own_pg_dsn,
                           redis_prefix=f"c{uuid.uuid4().hex[:10]}:", topic_prefix=topics.prefix,
                           rate_per_s=2.0, rate_burst=15)
    with LiveApi(settings) as api:
        yield {"api": api, "keys": keys, "dsn": own_pg_dsn}


def test_usage_by_day_and_workload_and_isolation(env: dict) -> None:
    api, keys = env["api"], env["keys"]
    window = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    with api.client(keys["acme"]) as c:
        doc = c.get("/api/v1/usage", params=window).json()
        assert doc["customer"] == "acme"
        assert [(i["day"], i["gpu_hours"]) for i in doc["items"]] == [
            ("2026-01-05", pytest.approx(180 / 3600)), ("2026-01-06", pytest.approx(1.0))]
        assert doc["totals"]["charge_usd"] == pytest.approx(2.075)
        by_w = c.get("/api/v1/usage", params={**window, "by": "workload"}).json()
        assert {i["workload_id"]: i["charge_usd"] for i in by_w["items"]} == {
            "wa1": pytest.approx(0.075), "wa2": pytest.approx(2.0)}
        r = c.get("/api/v1/usage", params={**window, "customer": "globex"})
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
        assert c.get("/api/v1/invoices/globex/2026-01").status_code == 403
    with api.client(keys["globex"]) as c:
        items = c.get("/api/v1/usage", params={**window, "by": "workload"}).json()["items"]
        assert [i["workload_id"] for i in items] == ["wg1"]
    with api.client(keys["admin"]) as c:
        doc = c.get("/api/v1/usage", params={**window, "customer": "globex"}).json()
        assert doc["totals"]["gpu_hours"] == pytest.approx(2.0)
        everyone = c.get("/api/v1/usage", params=window).json()
        assert everyone["customer"] is None
        assert everyone["totals"]["gpu_hours"] == pytest.approx(3.05)


def test_invoice_json_and_csv(env: dict) -> None:
    api, keys = env["api"], env["keys"]
    with api.client(keys["acme"]) as c:
        inv = c.get("/api/v1/invoices/acme/2026-01").json()
        assert [line["workload_id"] for line in inv["lines"]] == ["wa1", "wa2"]
        assert inv["totals"]["gpu_hours"] == pytest.approx(1.05)
        assert inv["totals"]["energy_kwh"] == pytest.approx(0.415)
        r = c.get("/api/v1/invoices/acme/2026-01.csv")
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(r.text)))
        assert rows[0][:4] == ["workload_id", "gpu_model", "site", "gpu_hours"]
        assert rows[-1][0] == "TOTAL" and float(rows[-1][-1]) == pytest.approx(2.075)
        same = c.get("/api/v1/invoices/acme/2026-01", headers={"Accept": "text/csv"})
        assert same.text == r.text
        assert c.get("/api/v1/invoices/acme/2026-02").json()["lines"] == []
        bad = c.get("/api/v1/invoices/acme/2026-13")
        assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["path", "month"]


def test_quota_409_and_every_write_audited_once(env: dict) -> None:
    api, keys, dsn = env["api"], env["keys"], env["dsn"]
    with api.client(keys["acme"]) as c:
        assert c.put("/api/v1/customers/acme/quota", json={"max_gpus": 1}).status_code == 403
    with api.client(keys["admin"]) as c:
        r = c.put("/api/v1/customers/acme/quota", json={"max_gpus": 2, "monthly_gpu_hours": 3.0},
                  headers={"X-Request-Id": "req-quota-1"})
        assert r.status_code == 200, r.text
    body = {"priority": 5, "gpus": 4, "mem_gb": 10.0, "est_duration_s": 60}
    with api.client(keys["acme"]) as c:
        r = c.post("/api/v1/workloads", json=body)
        assert r.status_code == 409 and "at most 2" in r.json()["detail"]
        # 2 GPUs for 2 h = 4 GPU-hours > 3 (nothing used this month: the rows are January's).
        r = c.post("/api/v1/workloads", json={**body, "gpus": 2, "est_duration_s": 7200})
        assert r.status_code == 409 and "GPU-hours" in r.json()["detail"]
        r = c.post("/api/v1/workloads", json={**body, "gpus": 1},
                   headers={"X-Request-Id": "req-submit-1"})
        assert r.status_code == 202, r.text
        wid = r.json()["workload_id"]
        r = c.delete(f"/api/v1/workloads/{wid}", headers={"X-Request-Id": "req-cancel-1"})
        assert r.status_code == 202
        assert c.get("/api/v1/customers/acme/quota").json()["max_gpus"] == 2
    key_out = subprocess.run([HCP, "api", "keys", "create", "--role", "customer",
                              "--customer", "initech", "--pg", dsn],
                             capture_output=True, text=True, check=True).stdout
    key_id = key_out.split()[3]
    subprocess.run([HCP, "api", "keys", "revoke", key_id, "--pg", dsn], check=True,
                   capture_output=True)
    subprocess.run([HCP, "api", "customers", "set", "initech", "--max-gpus", "8",
                    "--monthly-gpu-hours", "100", "--pg", dsn], check=True, capture_output=True)
    with api.client(keys["admin"]) as c:
        items = c.get("/api/v1/audit", params={"limit": 1000}).json()["items"]
    with api.client(keys["acme"]) as c:
        assert c.get("/api/v1/audit").status_code == 403
    seen = [(i["action"], i["target"]) for i in items]
    for want in [("quota.set", "acme"), ("workload.submit", wid), ("workload.cancel", wid),
                 ("key.create", key_id), ("key.revoke", key_id), ("quota.set", "initech")]:
        assert seen.count(want) == 1, (want, seen)
    by_action = {i["action"] + ":" + i["target"]: i for i in items}
    assert by_action[f"workload.cancel:{wid}"]["request_id"] == "req-cancel-1"
    assert by_action[f"workload.submit:{wid}"]["actor"] == f"key:{keys['acme'].split('_')[1]}"
    assert by_action["key.create:" + key_id]["actor"].startswith("cli:")
    # Rejected (409) submissions wrote nothing, so they are not in the trail.
    assert sum(1 for a, _ in seen if a == "workload.submit") == 1
    out = subprocess.run([HCP, "audit", "--json", "--action", "quota.set", "--pg", dsn],
                         capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["target"] for line in out.splitlines()] == ["acme", "initech"]
    # Append-only: UPDATE and DELETE are refused, whoever asks.
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log",
                    "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)


def test_rate_limit_answers_429_with_retry_after_per_route(env: dict) -> None:
    api, keys = env["api"], env["keys"]
    codes = []
    with api.client(keys["burst"]) as c:
        for _ in range(30):
            r = c.get("/api/v1/usage")
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.headers["content-type"] == "application/problem+json"
    assert codes[:15] == [200] * 15 and 429 in codes[15:]
    # Another key has its own bucket.
    with api.client(keys["globex"]) as c:
        assert c.get("/api/v1/usage").status_code == 200
    text = httpx.get(f"{api.url}/metrics").text
    line = next(ln for ln in text.splitlines()
                if ln.startswith('hcp_api_rate_limited_total{route="/api/v1/usage"}'))
    assert float(line.split()[-1]) == codes.count(429)
