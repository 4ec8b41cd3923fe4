-- Control loop (issue 17): the compliance tables, the same on both paths; their time
-- layout (BRIN indexes or hypertables and policies) is migration 0006.

-- One row per device and judged window: the command in force, whether the device
-- followed it, and realised value from observed figures (docs/control-loop.md).
CREATE TABLE IF NOT EXISTS device_compliance (
    device_id           text             NOT NULL,
    device_type         text             NOT NULL,
    site                text             NOT NULL,
    window_start        timestamptz      NOT NULL,
    window_end          timestamptz      NOT NULL,
    command             text,
    observed_on         boolean,
    compliant           boolean,
    misses              bigint           NOT NULL,
    flagged             boolean          NOT NULL,
    commanded_power_w   double precision,
    observed_power_w    double precision,
    planned_net_usd_hr  double precision,
    actual_net_usd_hr   double precision,
    savings_usd         double precision,
    PRIMARY KEY (device_id, window_end)
);

-- One row per site and window: commanded vs observed power, devices out of step,
-- curtailment savings and planned vs actual net (USD over the window).
CREATE TABLE IF NOT EXISTS site_compliance (
    site             text             NOT NULL,
    window_start     timestamptz      NOT NULL,
    window_end       timestamptz      NOT NULL,
    devices          bigint           NOT NULL,
    commanded_kw     double precision,
    observed_kw      double precision,
    noncompliant     bigint           NOT NULL,
    flagged          bigint           NOT NULL,
    savings_usd      double precision,
    planned_net_usd  double precision,
    actual_net_usd   double precision,
    PRIMARY KEY (site, window_end)
);
