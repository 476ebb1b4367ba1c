-- Raw heartbeat samples are chained per device instead of indexed by device.
--
-- An index on (device_seq, observed_at) puts each device's newest entry on its own leaf page, so a
-- group commit of heartbeats from N devices rewrote N index pages (and copied them through the
-- write-ahead log and the checkpoint). Now the table is only appended to: each sample records the
-- seq of the same device's previous sample (`prev`, 0 for none), and the device's latest health
-- row records its newest sample (`last_sample`). A device's samples are read by walking that chain
-- back from the newest until `received_at` falls below the time asked for; every sample's
-- observed_at is at most its received_at, and received_at does not decrease along a chain, so the
-- walk sees every sample observed since then. Retention prunes by received_at, oldest first, so a
-- chain is only ever cut at its old end.
--
-- Samples no longer reference devices: a deleted device's samples are deleted by walking its chain.
-- Sample numbers are never reused (AUTOINCREMENT), even after retention emptied the table, so a
-- chain can never lead into another device's samples; readers check the device as well.

CREATE TABLE heartbeat_samples_chained (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_seq  INTEGER NOT NULL,
    prev        INTEGER NOT NULL,
    observed_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    metrics     TEXT    NOT NULL
);

-- Samples stored before this migration carry no receipt time: the running maximum of their
-- observation times stands in for it, which keeps it non-decreasing along each chain.
INSERT INTO heartbeat_samples_chained (seq, device_seq, prev, observed_at, received_at, metrics)
SELECT seq, device_seq,
       COALESCE(LAG(seq) OVER (PARTITION BY device_seq ORDER BY seq), 0),
       observed_at,
       MAX(observed_at) OVER (PARTITION BY device_seq ORDER BY seq ROWS UNBOUNDED PRECEDING),
       metrics
FROM heartbeat_samples;

DROP TABLE heartbeat_samples;
ALTER TABLE heartbeat_samples_chained RENAME TO heartbeat_samples;
CREATE INDEX heartbeat_samples_received ON heartbeat_samples (received_at);

ALTER TABLE device_health ADD COLUMN last_sample INTEGER NOT NULL DEFAULT 0;
UPDATE device_health SET last_sample = newest.seq
FROM (SELECT device_seq, MAX(seq) AS seq FROM heartbeat_samples GROUP BY device_seq) AS newest
WHERE newest.device_seq = device_health.device_seq;
