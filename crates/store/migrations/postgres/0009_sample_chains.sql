-- Raw heartbeat samples are chained per device instead of indexed by device.
--
-- An index on (device_seq, observed_at) puts each device's newest entry on its own leaf page, so a
-- group commit of heartbeats from N devices rewrote N index pages (and wrote them to the WAL). Now
-- the table is only appended to: each sample records the seq of the same device's previous sample
-- (`prev`, 0 for none), and the device's latest health row records its newest sample
-- (`last_sample`). A device's samples are read by walking that chain back from the newest until
-- `received_at` falls below the time asked for; every sample's observed_at is at most its
-- received_at, and received_at does not decrease along a chain, so the walk sees every sample
-- observed since then. Retention prunes by received_at, oldest first, so a chain is only ever cut
-- at its old end. Writers lock the device row before extending its chain.
--
-- Samples no longer reference devices: a deleted device's samples are deleted by walking its chain.
-- Sample numbers come from the identity sequence and are never reused, so a chain can never lead
-- into another device's samples; readers check the device as well.

ALTER TABLE heartbeat_samples DROP CONSTRAINT heartbeat_samples_device_seq_fkey;
ALTER TABLE heartbeat_samples ADD COLUMN prev BIGINT NOT NULL DEFAULT 0,
                              ADD COLUMN received_at BIGINT NOT NULL DEFAULT 0;

-- Samples stored before this migration carry no receipt time: the running maximum of their
-- observation times stands in for it, which keeps it non-decreasing along each chain.
UPDATE heartbeat_samples s SET prev = w.prev, received_at = w.received_at
FROM (SELECT seq,
             COALESCE(LAG(seq) OVER (PARTITION BY device_seq ORDER BY seq), 0) AS prev,
             MAX(observed_at) OVER (PARTITION BY device_seq ORDER BY seq ROWS UNBOUNDED PRECEDING) AS received_at
      FROM heartbeat_samples) AS w
WHERE w.seq = s.seq;

DROP INDEX heartbeat_samples_device;
DROP INDEX heartbeat_samples_observed;
CREATE INDEX heartbeat_samples_received ON heartbeat_samples (received_at);

ALTER TABLE device_health ADD COLUMN last_sample BIGINT NOT NULL DEFAULT 0;
UPDATE device_health h SET last_sample = newest.seq
FROM (SELECT device_seq, MAX(seq) AS seq FROM heartbeat_samples GROUP BY device_seq) AS newest
WHERE newest.device_seq = h.device_seq;
