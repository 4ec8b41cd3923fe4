"""Request and response shapes of the v1 API, as pydantic models (they make /openapi.json).

Responses on the hot paths are written as pre-serialized JSON bytes; their models here
document exactly what those bytes hold, and the schemathesis test checks the two agree.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CalcDevice",
    "CalcPrices",
    "CalcRequest",
    "CalcResponse",
    "CalcResult",
    "Health",
    "PriceHistory",
    "PricesCurrent",
    "Problem",
    "Profitability",
    "RecommendationPage",
    "Resource",
    "ResourcePage",
    "Sites",
    "WorkloadAccepted",
    "WorkloadDetail",
    "WorkloadPage",
    "WorkloadRequest",
]

WORKLOAD_ID = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict] | None = None
    dependency: str | None = None


# --- optimizer -----------------------------------------------------------------------------


class Price(BaseModel):
    key: str = Field(description="kind or kind:scope")
    kind: str
    scope: str = Field(description="site, GPU model or '' for global kinds")
    value: float
    ts: int | None = Field(description="event time of the value, ms since the epoch")


class PricesCurrent(BaseModel):
    prices: list[Price]


class PriceHistory(BaseModel):
    prices: list[Price]


class CalcDevice(_Strict):
    device_type: Literal["asic", "gpu"]
    model: str | None = Field(None, max_length=128, description="GPU model: picks the spot price")
    site: str | None = Field(None, max_length=128, description="picks the electricity price")
    hashrate_ths: float | None = Field(None, ge=0, le=10_000, description="ASICs: required")
    power_w: float = Field(ge=0, le=50_000)
    busy_fraction: float = Field(0.0, ge=0, le=1, description="GPUs: share of time rented")
    state: Literal["busy", "idle", "down"] = Field(
        "idle", description="GPUs: the last reported state (extension; default idle)"
    )

    @model_validator(mode="after")
    def _asic_hashrate(self) -> CalcDevice:
        if self.device_type == "asic" and self.hashrate_ths is None:
            raise ValueError("hashrate_ths is required for an asic")
        return self


class CalcPrices(_Strict):
    btc_usd: float | None = Field(None, gt=0, le=1e9)
    difficulty: float | None = Field(None, gt=0, le=1e30)
    block_reward_btc: float | None = Field(None, ge=0, le=1e4)
    electricity_usd_mwh: float | None = Field(None, ge=0, le=1e6)
    gpu_spot_usd_hr: float | None = Field(None, ge=0, le=1e6)
    pool_fee: float | None = Field(None, ge=0, lt=1)


class CalcRequest(_Strict):
    devices: list[CalcDevice] = Field(min_length=1, max_length=10_000)
    prices: CalcPrices = Field(default_factory=CalcPrices)


class CalcResult(BaseModel):
    revenue_usd_hr: float | None
    cost_usd_hr: float | None
    net_usd_hr: float | None
    score: float | None
    action: str
    reason: str


class CalcResponse(BaseModel):
    results: list[CalcResult]


class Resource(BaseModel):
    """A device's latest window and recommendation (the job's ``rec:{device}`` hash)."""

    device_id: str
    device_type: str
    site: str
    model: str
    state: str = Field(description="implied by the recommendation (see docs/api.md)")
    window_start: int | None
    window_end: int | None
    action: str
    reason: str
    revenue_usd_hr: float | None
    cost_usd_hr: float | None
    net_usd_hr: float | None
    score: float | None
    expected_revenue_usd_hr: float | None
    expected_cost_usd_hr: float | None
    expected_net_usd_hr: float | None
    expected_power_w: float | None
    btc_usd: float | None
    difficulty: float | None
    block_reward_btc: float | None
    electricity_usd_mwh: float | None
    gpu_spot_usd_hr: float | None
    power_cap_mw: float | None


class Summary(BaseModel):
    model_config = ConfigDict(extra="allow")
    window_end: int | None = None
    devices: int | None = None
    net_usd_hr: float | None = None


class Summaries(BaseModel):
    fleet: Summary | None
    sites: dict[str, Summary]


class RecommendationPage(BaseModel):
    items: list[Resource]
    next_cursor: str | None
    summary: Summaries


class ResourcePage(BaseModel):
    items: list[Resource]
    next_cursor: str | None


class WindowRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    window_start: int
    window_end: int
    action: str
    reason: str
    net_usd_hr: float | None


class Profitability(BaseModel):
    device_id: str
    latest: Resource | None
    history: list[WindowRow]


# --- orchestrator --------------------------------------------------------------------------


class WorkloadRequest(_Strict):
    """The request fields of SPEC section 1 (``v``, ``ts`` are added by the API)."""

    workload_id: str | None = Field(None, pattern=WORKLOAD_ID, description="made when left out")
    customer: str | None = Field(
        None, pattern=NAME, description="required for admin keys; a customer key's own"
    )
    kind: Literal["inference", "training", "batch"] | None = None
    priority: int = Field(ge=1, le=10)
    gpus: int = Field(ge=1, le=1024)
    mem_gb: float = Field(ge=0, le=10_000)
    est_duration_s: int = Field(ge=1, le=10**9)
    max_price_usd_hr: float | None = Field(None, ge=0, le=1e6)


class WorkloadAccepted(BaseModel):
    workload_id: str
    state: str


class Transition(BaseModel):
    ts: int
    from_state: str | None
    to_state: str
    gpus: list[str]
    site: str | None
    reason: str | None


class WorkloadSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    workload_id: str
    customer: str | None
    state: str
    priority: int | None
    gpus: list[str]
    site: str | None
    pending_reason: str | None
    # A queued workload at the head of the queue holds a reservation (docs/workloads.md).
    expected_start_ts: int | None = None
    reserved_site: str | None = None


class WorkloadDetail(WorkloadSummary):
    request: dict | None
    transitions: list[Transition]


class WorkloadPage(BaseModel):
    items: list[WorkloadSummary]
    next_cursor: str | None


class CancelAccepted(BaseModel):
    workload_id: str
    state: str
    cancel_requested: bool


class Site(BaseModel):
    model_config = ConfigDict(extra="allow")
    site: str
    devices: int | None
    power_now_w: float | None
    power_cap_w: float | None
    headroom_w: float | None
    revenue_usd_hr: float | None
    cost_usd_hr: float | None
    net_usd_hr: float | None


class Sites(BaseModel):
    sites: list[Site]
    fleet: Summary | None


class Dependency(BaseModel):
    ok: bool
    detail: str | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    dependencies: dict[str, Dependency]
    read_model: dict
