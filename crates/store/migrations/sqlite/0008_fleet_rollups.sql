-- Fleet rollups for the dashboard: device counts per (status, connectivity, firmware, region),
-- maintained by triggers, and snapshots of the per-version counts over time.
--
-- Triggers only append +1/-1 rows to fleet_count_deltas; the rollup tick folds them into
-- fleet_counts, and readers add the few unfolded deltas to the folded counts. No writer ever
-- updates a shared counter row, so concurrent transactions never wait on one another here.
-- The update trigger fires only when one of the four counted columns changes: heartbeats, which
-- rewrite last_seen all the time, pay nothing.

CREATE TABLE fleet_counts (
    status       TEXT    NOT NULL,
    connectivity TEXT    NOT NULL,
    firmware     TEXT    NOT NULL,
    region       TEXT    NOT NULL,
    devices      INTEGER NOT NULL,
    PRIMARY KEY (status, connectivity, firmware, region)
) WITHOUT ROWID;

CREATE TABLE fleet_count_deltas (
    seq          INTEGER PRIMARY KEY,
    status       TEXT    NOT NULL,
    connectivity TEXT    NOT NULL,
    firmware     TEXT    NOT NULL,
    region       TEXT    NOT NULL,
    delta        INTEGER NOT NULL
);

CREATE TRIGGER devices_fleet_count_insert AFTER INSERT ON devices
BEGIN
    INSERT INTO fleet_count_deltas (status, connectivity, firmware, region, delta)
    VALUES (NEW.status, NEW.connectivity, NEW.firmware, NEW.region, 1);
END;

CREATE TRIGGER devices_fleet_count_delete AFTER DELETE ON devices
BEGIN
    INSERT INTO fleet_count_deltas (status, connectivity, firmware, region, delta)
    VALUES (OLD.status, OLD.connectivity, OLD.firmware, OLD.region, -1);
END;

CREATE TRIGGER devices_fleet_count_update AFTER UPDATE OF status, connectivity, firmware, region ON devices
    WHEN OLD.status IS NOT NEW.status OR OLD.connectivity IS NOT NEW.connectivity
      OR OLD.firmware IS NOT NEW.firmware OR OLD.region IS NOT NEW.region
BEGIN
    INSERT INTO fleet_count_deltas (status, connectivity, firmware, region, delta)
    VALUES (OLD.status, OLD.connectivity, OLD.firmware, OLD.region, -1),
           (NEW.status, NEW.connectivity, NEW.firmware, NEW.region, 1);
END;

-- The one full scan: counts of the devices that exist when this migration runs.
INSERT INTO fleet_counts (status, connectivity, firmware, region, devices)
SELECT status, connectivity, firmware, region, COUNT(*) FROM devices
GROUP BY status, connectivity, firmware, region;

-- When a snapshot of the per-version counts was taken (one row per snapshot, so a long window is
-- downsampled by reading these times, not every version's rows).
CREATE TABLE version_snapshots (
    at INTEGER PRIMARY KEY
);

-- Accepted devices per firmware at each snapshot; a version that disappeared gets one 0 row.
CREATE TABLE version_history (
    at       INTEGER NOT NULL,
    firmware TEXT    NOT NULL,
    devices  INTEGER NOT NULL,
    PRIMARY KEY (at, firmware)
) WITHOUT ROWID;
