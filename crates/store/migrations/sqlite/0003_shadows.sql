-- Device shadows (see drover_core::shadow): one row per device and shadow name, the classic
-- (unnamed) shadow under the name ''. desired, reported and metadata are JSON objects; the delta is
-- derived, so it is not stored. A deleted shadow stays as a tombstone (deleted, empty state) that
-- keeps its version, so a shadow written again continues the version sequence and devices, which
-- ignore versions they have already seen, never mistake the new document for a stale one.
-- Rows can be several kilobytes, so this is an ordinary rowid table rather than WITHOUT ROWID.

CREATE TABLE shadows (
    device_seq INTEGER NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    desired    TEXT    NOT NULL,
    reported   TEXT    NOT NULL,
    metadata   TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_seq, name)
);
