-- Device health: the latest heartbeat per device, raw samples for per-device charts (pruned after
-- a retention period), and per-cohort rollups (firmware x metric x time bucket) for canary
-- analysis and dashboards. Metric maps are JSON objects of name -> number.

CREATE TABLE device_health (
    device_seq  BIGINT PRIMARY KEY REFERENCES devices (seq) ON DELETE CASCADE,
    observed_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    metrics     TEXT   NOT NULL,
    boot_slot   TEXT   NOT NULL DEFAULT ''
);

CREATE TABLE heartbeat_samples (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_seq  BIGINT NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    observed_at BIGINT NOT NULL,
    metrics     TEXT   NOT NULL
);
CREATE INDEX heartbeat_samples_device ON heartbeat_samples (device_seq, observed_at);
CREATE INDEX heartbeat_samples_observed ON heartbeat_samples (observed_at);

CREATE TABLE cohort_rollups (
    firmware TEXT COLLATE "C" NOT NULL,
    metric   TEXT COLLATE "C" NOT NULL,
    bucket   BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    sum      DOUBLE PRECISION NOT NULL,
    sum_sq   DOUBLE PRECISION NOT NULL,
    min      DOUBLE PRECISION NOT NULL,
    max      DOUBLE PRECISION NOT NULL,
    sketch   BYTEA  NOT NULL,
    PRIMARY KEY (firmware, metric, bucket)
);
