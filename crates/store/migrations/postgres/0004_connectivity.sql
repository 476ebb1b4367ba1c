-- Connectivity: each heartbeat sets a device online or degraded and a deadline after which it is
-- offline; a sweep over the partial index on that deadline finds exactly the devices that just
-- crossed it. Transitions are kept as history.

ALTER TABLE devices ADD COLUMN connectivity TEXT COLLATE "C" NOT NULL DEFAULT 'unknown';
-- Link quality of the latest heartbeat, 0-100; -1 before the first.
ALTER TABLE devices ADD COLUMN link_score SMALLINT NOT NULL DEFAULT -1;
ALTER TABLE devices ADD COLUMN offline_after BIGINT NOT NULL DEFAULT 0;
CREATE INDEX devices_connectivity ON devices (connectivity);
CREATE INDEX devices_offline_after ON devices (offline_after) WHERE connectivity IN ('online', 'degraded');

CREATE TABLE connectivity_events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_seq BIGINT NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    at         BIGINT NOT NULL,
    from_state TEXT   NOT NULL,
    to_state   TEXT   NOT NULL
);
CREATE INDEX connectivity_events_device ON connectivity_events (device_seq, at);
