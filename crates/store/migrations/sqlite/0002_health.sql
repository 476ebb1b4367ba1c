-- Device health: the latest heartbeat per device, raw samples for per-device charts (pruned after
-- a retention period), and per-cohort rollups (firmware x metric x time bucket) for canary
-- analysis and dashboards. Metric maps are JSON objects of name -> number.

CREATE TABLE device_health (
    device_seq  INTEGER PRIMARY KEY REFERENCES devices (seq) ON DELETE CASCADE,
    observed_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    metrics     TEXT    NOT NULL,
    boot_slot   TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE heartbeat_samples (
    seq         INTEGER PRIMARY KEY,
    device_seq  INTEGER NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    observed_at INTEGER NOT NULL,
    metrics     TEXT    NOT NULL
);
CREATE INDEX heartbeat_samples_device ON heartbeat_samples (device_seq, observed_at);
CREATE INDEX heartbeat_samples_observed ON heartbeat_samples (observed_at);

CREATE TABLE cohort_rollups (
    firmware TEXT    NOT NULL,
    metric   TEXT    NOT NULL,
    bucket   INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    sum      REAL    NOT NULL,
    sum_sq   REAL    NOT NULL,
    min      REAL    NOT NULL,
    max      REAL    NOT NULL,
    sketch   BLOB    NOT NULL,
    PRIMARY KEY (firmware, metric, bucket)
);
