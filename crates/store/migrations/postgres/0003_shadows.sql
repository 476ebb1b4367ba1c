-- Device shadows (see drover_core::shadow): one row per device and shadow name, the classic
-- (unnamed) shadow under the name ''. desired, reported and metadata are JSON objects; the delta is
-- derived, so it is not stored. A deleted shadow stays as a tombstone (deleted, empty state) that
-- keeps its version, so a shadow written again continues the version sequence and devices, which
-- ignore versions they have already seen, never mistake the new document for a stale one.

CREATE TABLE shadows (
    device_seq BIGINT  NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    name       TEXT    COLLATE "C" NOT NULL,
    desired    TEXT    NOT NULL,
    reported   TEXT    NOT NULL,
    metadata   TEXT    NOT NULL,
    version    BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (device_seq, name)
);
