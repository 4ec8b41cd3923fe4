-- HCP history tables (SPEC section 4), shared by the PostgreSQL and TimescaleDB paths.
-- Times are timestamptz; the pipeline's DataFrames carry epoch milliseconds and the sink
-- converts. Every table has its natural key as primary key, so a replayed batch upserts
-- instead of duplicating. On the TimescaleDB path each key contains the partitioning
-- column, which hypertables require of unique constraints.

CREATE TABLE IF NOT EXISTS gpu_metrics (
    ts            timestamptz      NOT NULL,
    gpu_id        text             NOT NULL,
    site          text             NOT NULL,
    model         text             NOT NULL,
    state         text             NOT NULL,
    util_pct      double precision,
    temp_c        double precision,
    power_w       double precision,
    mem_used_gb   double precision,
    mem_total_gb  double precision,
    workload_id   text,
    PRIMARY KEY (gpu_id, ts)
);

CREATE TABLE IF NOT EXISTS asic_metrics (
    ts               timestamptz      NOT NULL,
    asic_id          text             NOT NULL,
    site             text             NOT NULL,
    model            text             NOT NULL,
    state            text             NOT NULL,
    hashrate_ths     double precision,
    power_w          double precision,
    temp_c           double precision,
    shares_accepted  bigint,
    shares_rejected  bigint,
    hw_errors        bigint,
    PRIMARY KEY (asic_id, ts)
);

-- scope is the site, the GPU model or '' (global kinds); key is kind or kind:scope.
CREATE TABLE IF NOT EXISTS market_prices (
    ts     timestamptz      NOT NULL,
    kind   text             NOT NULL,
    scope  text             NOT NULL,
    key    text             NOT NULL,
    value  double precision NOT NULL,
    PRIMARY KEY (key, ts)
);

CREATE TABLE IF NOT EXISTS device_windows (
    device_id        text             NOT NULL,
    device_type      text             NOT NULL,
    site             text             NOT NULL,
    model            text             NOT NULL,
    window_start     timestamptz      NOT NULL,
    window_end       timestamptz      NOT NULL,
    samples          bigint           NOT NULL,
    util_pct         double precision,
    power_w          double precision,
    temp_c           double precision,
    hashrate_ths     double precision,
    shares_accepted  bigint,
    shares_rejected  bigint,
    hw_errors        bigint,
    busy_fraction    double precision,
    j_per_th         double precision,
    reject_rate      double precision,
    PRIMARY KEY (device_id, window_start)
);

CREATE TABLE IF NOT EXISTS recommendations (
    device_id                text             NOT NULL,
    device_type              text             NOT NULL,
    site                     text             NOT NULL,
    model                    text             NOT NULL,
    window_start             timestamptz      NOT NULL,
    window_end               timestamptz      NOT NULL,
    action                   text             NOT NULL,
    reason                   text             NOT NULL,
    revenue_usd_hr           double precision,
    cost_usd_hr              double precision,
    net_usd_hr               double precision,
    score                    double precision,
    expected_revenue_usd_hr  double precision,
    expected_cost_usd_hr     double precision,
    expected_net_usd_hr      double precision,
    expected_power_w         double precision,
    btc_usd                  double precision,
    difficulty               double precision,
    block_reward_btc         double precision,
    electricity_usd_mwh      double precision,
    gpu_spot_usd_hr          double precision,
    power_cap_mw             double precision,
    PRIMARY KEY (device_id, window_end)
);

CREATE TABLE IF NOT EXISTS workload_events (
    workload_id  text        NOT NULL,
    ts           timestamptz NOT NULL,
    from_state   text,
    to_state     text        NOT NULL,
    priority     bigint,
    gpus         text,
    site         text,
    reason       text,
    PRIMARY KEY (workload_id, ts, to_state)
);

-- Per-site questions ("what did site X earn") filter on site and time.
CREATE INDEX IF NOT EXISTS recommendations_site_window_end_idx
    ON recommendations (site, window_end);
