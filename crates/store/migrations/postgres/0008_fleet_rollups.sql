-- Fleet rollups for the dashboard: device counts per (status, connectivity, firmware, region),
-- maintained by triggers, and snapshots of the per-version counts over time.
--
-- Triggers only append delta rows to fleet_count_deltas; the rollup tick folds them into
-- fleet_counts (one replica at a time, under an advisory lock), and readers add the few unfolded
-- deltas to the folded counts in one statement. No writer ever updates a shared counter row, so
-- heartbeats, the offline sweep and imports never wait on one another or deadlock here.
-- Inserts and deletes use statement-level triggers with transition tables (an import of 10,000
-- devices appends a handful of grouped rows); updates use a row trigger whose WHEN clause is
-- checked without calling the function, so heartbeats, which rewrite last_seen all the time and
-- change none of the counted columns, pay nothing.

CREATE TABLE fleet_counts (
    status       TEXT   COLLATE "C" NOT NULL,
    connectivity TEXT   COLLATE "C" NOT NULL,
    firmware     TEXT   COLLATE "C" NOT NULL,
    region       TEXT   COLLATE "C" NOT NULL,
    devices      BIGINT NOT NULL,
    PRIMARY KEY (status, connectivity, firmware, region)
);

CREATE TABLE fleet_count_deltas (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status       TEXT   COLLATE "C" NOT NULL,
    connectivity TEXT   COLLATE "C" NOT NULL,
    firmware     TEXT   COLLATE "C" NOT NULL,
    region       TEXT   COLLATE "C" NOT NULL,
    delta        BIGINT NOT NULL
);

-- Folding deletes every delta row, so after a large change (an import, a mass status change) the
-- table is mostly dead tuples until vacuumed, and readers scan them: vacuum it after every few
-- thousand changed rows instead of after 20% of a table that is empty most of the time.
ALTER TABLE fleet_count_deltas SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

CREATE FUNCTION fleet_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fleet_count_deltas (status, connectivity, firmware, region, delta)
    SELECT status, connectivity, firmware, region, COUNT(*) FROM inserted_devices
    GROUP BY status, connectivity, firmware, region;
    RETURN NULL;
END $$;

CREATE FUNCTION fleet_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fleet_count_deltas (status, connectivity, firmware, region, delta)
    SELECT status, connectivity, firmware, region, -COUNT(*) FROM deleted_devices
    GROUP BY status, connectivity, firmware, region;
    RETURN NULL;
END $$;

CREATE FUNCTION fleet_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fleet_count_deltas (status, connectivity, firmware, region, delta)
    VALUES (OLD.status, OLD.connectivity, OLD.firmware, OLD.region, -1),
           (NEW.status, NEW.connectivity, NEW.firmware, NEW.region, 1);
    RETURN NULL;
END $$;

CREATE TRIGGER devices_fleet_count_insert AFTER INSERT ON devices
    REFERENCING NEW TABLE AS inserted_devices
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_count_inserted();

CREATE TRIGGER devices_fleet_count_delete AFTER DELETE ON devices
    REFERENCING OLD TABLE AS deleted_devices
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_count_deleted();

CREATE TRIGGER devices_fleet_count_update AFTER UPDATE OF status, connectivity, firmware, region ON devices
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.connectivity IS DISTINCT FROM NEW.connectivity
       OR OLD.firmware IS DISTINCT FROM NEW.firmware OR OLD.region IS DISTINCT FROM NEW.region)
    EXECUTE FUNCTION fleet_count_updated();

-- The one full scan: counts of the devices that exist when this migration runs.
INSERT INTO fleet_counts (status, connectivity, firmware, region, devices)
SELECT status, connectivity, firmware, region, COUNT(*) FROM devices
GROUP BY status, connectivity, firmware, region;

-- When a snapshot of the per-version counts was taken (one row per snapshot, so a long window is
-- downsampled by reading these times, not every version's rows).
CREATE TABLE version_snapshots (
    at BIGINT PRIMARY KEY
);

-- Accepted devices per firmware at each snapshot; a version that disappeared gets one 0 row.
CREATE TABLE version_history (
    at       BIGINT NOT NULL,
    firmware TEXT   COLLATE "C" NOT NULL,
    devices  BIGINT NOT NULL,
    PRIMARY KEY (at, firmware)
);
