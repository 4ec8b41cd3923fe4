// What each console page fetches from the public v1 API and where it goes. Alpine.js
// binds these objects to the page and uPlot draws the charts; the key travels in the
// HttpOnly cookie set at sign-in, so fetch() and EventSource need nothing more.
"use strict";

const API = "/api/v1";
const FEED_MAX = 50;
const ACTION_DEVICES = { mine: "ASICs", curtail: "ASICs", serve: "GPUs", offer: "GPUs", power_down: "GPUs" };
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

async function api(path, options = {}) {
  const response = await fetch(API + path, { credentials: "same-origin", ...options });
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(body?.detail || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.problem = body;
    throw error;
  }
  return body;
}

const fmt = {
  usd(v) { return v == null ? "–" : v.toLocaleString("en-US", { maximumFractionDigits: 2 }); },
  num(v) { return v == null ? "–" : v.toLocaleString("en-US", { maximumFractionDigits: 3 }); },
  kw(v) { return v == null ? "–" : (v / 1000).toLocaleString("en-US", { maximumFractionDigits: 1 }); },
  when(ms) { return ms == null ? "" : new Date(ms).toISOString().slice(0, 16).replace("T", " "); },
};

// A live stream that reopens itself; `on` maps event names to handlers of parsed data.
function follow(path, on, onState) {
  const source = new EventSource(API + path);
  for (const [name, handler] of Object.entries(on)) {
    source.addEventListener(name, (e) => handler(JSON.parse(e.data)));
  }
  source.addEventListener("error", (e) => {
    if (e.data) onState?.(JSON.parse(e.data).detail);
  });
  source.addEventListener("status", () => onState?.(""));
  return source;
}

function lineChart(el, seriesNames) {
  const opts = {
    width: Math.max(el.clientWidth, 320),
    height: 240,
    scales: { x: { time: true } },
    series: [{}, ...seriesNames.map((label, i) => ({ label, stroke: palette(i), width: 1.5 }))],
    axes: [{}, { label: "USD/h", size: 70 }],
  };
  return new uPlot(opts, [[], ...seriesNames.map(() => [])], el);
}

function palette(i) {
  return ["#222", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"][i % 7];
}

window.opsPage = () => ({
  ...fmt,
  sites: [],
  fleet: null,
  prices: [],
  feed: [],
  queue: [],
  cordoned: [],
  status: "",
  deviceId: "",
  _chart: null,
  _points: new Map(), // window_end -> {fleet, site -> net}
  _siteNames: [],
  _last: null,
  _seq: 0,

  async start() {
    try {
      await Promise.all([this.loadSites(), this.loadPrices(), this.loadQueue(), this.loadCordoned()]);
      await this.loadHistory();
    } catch (e) {
      this.status = e.message;
    }
    follow("/stream/sites", { sites: (doc) => this.onSites(doc) }, (s) => (this.status = s));
    follow("/stream/workloads", { workload: () => this.loadQueueSoon() }, (s) => (this.status = s));
  },

  fleetLine() {
    const f = this.fleet;
    if (!f) return "";
    return `${fmt.usd(f.net_usd_hr)} USD/h net · window ending ${fmt.when(f.window_end)}`;
  },

  async loadSites() {
    const doc = await api("/sites");
    this._last = doc;
    this.sites = doc.sites;
    this.fleet = doc.fleet;
  },

  async loadPrices() {
    this.prices = (await api("/prices/current")).prices;
  },

  async loadQueue() {
    const page = await api("/workloads?state=queued&limit=100");
    this.queue = page.items;
  },

  loadQueueSoon() {
    clearTimeout(this._queueTimer);
    this._queueTimer = setTimeout(() => this.loadQueue().catch((e) => (this.status = e.message)), 300);
  },

  async loadCordoned() {
    this.cordoned = (await api("/gpus/cordoned")).items;
  },

  async loadHistory() {
    const doc = await api("/sites/history");
    for (const w of doc.windows) this.addPoint(w.window_end, w.site, w.net_usd_hr);
    this.draw();
  },

  addPoint(windowEnd, site, net) {
    if (windowEnd == null) return;
    const point = this._points.get(windowEnd) ?? { fleet: 0, sites: {} };
    point.sites[site] = net ?? 0;
    point.fleet = Object.values(point.sites).reduce((a, b) => a + b, 0);
    this._points.set(windowEnd, point);
    if (!this._siteNames.includes(site)) this._siteNames.push(site);
  },

  draw() {
    const names = [...this._siteNames].sort();
    if (!this._chart || this._chart.series.length !== names.length + 2) {
      this._chart?.destroy();
      this.$refs.chart.replaceChildren();
      this._chart = lineChart(this.$refs.chart, ["fleet", ...names]);
    }
    const ends = [...this._points.keys()].sort((a, b) => a - b);
    const data = [ends.map((t) => t / 1000), ends.map((t) => this._points.get(t).fleet)];
    for (const n of names) data.push(ends.map((t) => this._points.get(t).sites[n] ?? null));
    this._chart.setData(data);
  },

  async onSites(doc) {
    const before = new Map((this._last?.sites ?? []).map((s) => [s.site, s]));
    this._last = doc;
    this.sites = doc.sites;
    this.fleet = doc.fleet;
    let priced = false;
    for (const s of doc.sites) {
      this.addPoint(s.window_end, s.site, s.net_usd_hr);
      const old = before.get(s.site);
      if (!old || old.window_end === s.window_end) continue;
      for (const action of Object.keys(ACTION_DEVICES)) {
        const gained = (s[`n_${action}`] ?? 0) - (old[`n_${action}`] ?? 0);
        if (gained <= 0) continue;
        if (!priced) {
          await this.loadPrices().catch(() => {});
          priced = true;
        }
        this.pushChange(s, action, gained);
      }
    }
    this.draw();
    this.loadCordoned().catch(() => {});
  },

  async pushChange(site, action, gained) {
    const elec = this.prices.find((p) => p.key === `electricity_usd_mwh:${site.site}`);
    const devices = gained === 1 ? ACTION_DEVICES[action].slice(0, -1) : ACTION_DEVICES[action];
    let text = `${site.site}: ${gained} ${devices} ${action}`;
    if (elec) text += `, electricity ${fmt.num(elec.value)} USD/MWh`;
    const entry = { id: ++this._seq, window_end: site.window_end, text };
    this.feed.unshift(entry);
    this.feed.splice(FEED_MAX);
    try { // why: the reasons of the devices now on that action at that site
      const page = await api(`/recommendations?site=${encodeURIComponent(site.site)}&action=${action}&limit=100`);
      const reasons = {};
      for (const r of page.items) reasons[r.reason] = (reasons[r.reason] ?? 0) + 1;
      const why = Object.entries(reasons).sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r} ${n}`);
      // Through the reactive feed, not the raw entry object, so the line re-renders.
      const live = this.feed.find((e) => e.id === entry.id);
      if (live && why.length) live.text = `${text} (${why.join(", ")})`;
    } catch (e) {
      this.status = e.message;
    }
  },
});

window.devicePage = (id) => ({
  ...fmt,
  id,
  latest: null,
  history: [],
  status: "",

  async start() {
    try {
      const doc = await api(`/profitability/${encodeURIComponent(id)}`);
      this.latest = doc.latest;
      this.history = doc.history;
      const rows = [...doc.history].sort((a, b) => a.window_end - b.window_end);
      const chart = lineChart(this.$refs.chart, ["net"]);
      chart.setData([rows.map((r) => r.window_end / 1000), rows.map((r) => r.net_usd_hr)]);
    } catch (e) {
      this.status = e.status === 404 ? `No device ${id}.` : e.message;
    }
  },
});

// Usage: GET /api/v1/usage?by=day for one month, GPU-hours and charges on two axes.
window.usagePage = (own) => ({
  ...fmt,
  customer: own,
  fixed: own !== "",
  month: new Date().toISOString().slice(0, 7),
  days: [],
  totals: {},
  status: "",
  chart: null,

  start() {
    const el = this.$refs.chart;
    this.chart = new uPlot({
      width: Math.max(el.clientWidth, 320),
      height: 240,
      scales: { x: { time: true }, h: {}, usd: {} },
      series: [
        {},
        { label: "GPU-hours", scale: "h", stroke: palette(1), width: 1.5, points: { show: true } },
        { label: "charge USD", scale: "usd", stroke: palette(2), width: 1.5, points: { show: true } },
      ],
      axes: [{}, { scale: "h", label: "GPU-hours", size: 70 },
             { scale: "usd", side: 1, label: "USD", size: 70, grid: { show: false } }],
    }, [[], [], []], el);
    if (this.customer) this.load();
  },

  invoiceCsv() {
    return `${API}/invoices/${encodeURIComponent(this.customer)}/${this.month}.csv`;
  },

  async load() {
    const [y, m] = this.month.split("-").map(Number);
    const from = new Date(Date.UTC(y, m - 1, 1)).toISOString();
    const to = new Date(Date.UTC(y, m, 1)).toISOString();
    const query = new URLSearchParams({ by: "day", from, to });
    if (!this.fixed) query.set("customer", this.customer);
    try {
      const doc = await api(`/usage?${query}`);
      this.days = doc.items;
      this.totals = doc.totals;
      this.status = doc.items.length ? "" : `No usage for ${this.customer} in ${this.month}.`;
      this.chart.setData([
        doc.items.map((d) => Date.parse(d.day + "T00:00:00Z") / 1000),
        doc.items.map((d) => d.gpu_hours),
        doc.items.map((d) => d.charge_usd),
      ]);
    } catch (e) {
      this.status = e.message;
    }
  },
});

const EMPTY_FORM = { customer: "", kind: "", priority: "5", gpus: "1", mem_gb: "40", est_duration_s: "600", max_price_usd_hr: "" };
const NUMBERS = new Set(["priority", "gpus", "mem_gb", "est_duration_s", "max_price_usd_hr"]);

window.customerPage = (customer) => ({
  customer,
  form: { ...EMPTY_FORM },
  errors: {},
  accepted: "",
  workloads: [],
  cancelling: {}, // workload_id -> true once the API accepted its cancel (202)
  trail: {}, // workload_id -> the states its events went through since the page opened
  status: "",

  terminal: (state) => TERMINAL.has(state),

  async start() {
    await this.load();
    const onEvent = (doc) => {
      this.step(doc.workload_id, doc.to_state ?? doc.state);
      this.loadSoon();
    };
    follow("/stream/workloads", { workload: onEvent }, (s) => (this.status = s));
  },

  // A state change seen on the stream; the list alone would skip the brief ones (queued).
  step(id, state) {
    if (!id || !state) return;
    const seen = this.trail[id] ?? [];
    if (seen[seen.length - 1] !== state) this.trail = { ...this.trail, [id]: [...seen, state] };
  },

  async load() {
    try {
      this.workloads = (await api("/workloads?limit=100")).items;
      this.status = "";
    } catch (e) {
      this.status = e.message;
    }
  },

  loadSoon() {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this.load(), 200);
  },

  body() {
    // Fields go to the API as typed values; what the API rejects comes back per field.
    const body = {};
    for (const [name, raw] of Object.entries(this.form)) {
      const value = String(raw).trim();
      if (value === "" || (name === "customer" && this.customer)) continue;
      body[name] = NUMBERS.has(name) && value !== "" && !Number.isNaN(Number(value)) ? Number(value) : value;
    }
    return body;
  },

  async submit() {
    this.errors = {};
    this.accepted = "";
    try {
      const answer = await api("/workloads", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID() },
        body: JSON.stringify(this.body()),
      });
      this.accepted = `${answer.workload_id} ${answer.state}`;
      this.loadSoon();
    } catch (e) {
      const errors = {};
      for (const err of e.problem?.errors ?? []) {
        const field = (err.loc ?? []).filter((p) => p !== "body").join(".");
        if (field in this.form) errors[field] = err.msg;
        else errors._ = `${field ? field + ": " : ""}${err.msg}`;
      }
      if (!Object.keys(errors).length) errors._ = e.message;
      this.errors = errors;
    }
  },

  async cancel(id) {
    try {
      await api(`/workloads/${encodeURIComponent(id)}`, { method: "DELETE" });
      // The router applies the cancel; until its state arrives the row says it was asked.
      this.cancelling = { ...this.cancelling, [id]: true };
      this.loadSoon();
    } catch (e) {
      this.status = e.message;
    }
  },
});
