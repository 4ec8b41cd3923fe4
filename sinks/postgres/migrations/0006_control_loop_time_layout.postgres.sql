-- Control loop (issue 17), plain PostgreSQL path: BRIN time indexes on the compliance tables.

CREATE INDEX IF NOT EXISTS device_compliance_window_end_brin ON device_compliance USING brin (window_end);
CREATE INDEX IF NOT EXISTS site_compliance_window_end_brin ON site_compliance USING brin (window_end);
