-- Over-the-air updates: artifacts (firmware images) and their binary deltas, one device's
-- deployment of an artifact with its step history, and the TUF repository's signed metadata and
-- online keys. Image bytes live in the object store under object_key; rows hold what is needed to
-- find, list and authorise them.

CREATE TABLE artifacts (
    seq            INTEGER PRIMARY KEY,
    name           TEXT   NOT NULL,
    version        TEXT   NOT NULL,
    version_key    BLOB   NOT NULL,
    -- JSON arrays of strings.
    device_types   TEXT   NOT NULL,
    hw_revs        TEXT   NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT   NOT NULL,
    object_key     TEXT   NOT NULL,
    -- Path of the image in the TUF repository's targets (before the hash prefix).
    target_path    TEXT   NOT NULL,
    -- JSON object: git_commit, build_id, ci_url.
    provenance     TEXT   NOT NULL,
    release_notes  TEXT   NOT NULL DEFAULT '',
    security_floor TEXT,
    symbols_key    TEXT,
    symbols_size   INTEGER,
    symbols_sha256 TEXT,
    created_at     INTEGER NOT NULL,
    created_by     TEXT   NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX artifacts_name_version ON artifacts (name, version_key);
CREATE UNIQUE INDEX artifacts_target_path ON artifacts (target_path);

CREATE TABLE artifact_deltas (
    seq         INTEGER PRIMARY KEY,
    from_seq    INTEGER NOT NULL REFERENCES artifacts (seq) ON DELETE CASCADE,
    to_seq      INTEGER NOT NULL REFERENCES artifacts (seq) ON DELETE CASCADE,
    size        INTEGER NOT NULL,
    sha256      TEXT   NOT NULL,
    object_key  TEXT   NOT NULL,
    target_path TEXT   NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    UNIQUE (from_seq, to_seq)
);

CREATE TABLE deployments (
    id           INTEGER PRIMARY KEY,
    device_seq   INTEGER NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    -- NULL once the artifact is deleted; name and version keep the history readable.
    artifact_seq INTEGER REFERENCES artifacts (seq) ON DELETE SET NULL,
    artifact     TEXT   NOT NULL,
    version      TEXT   NOT NULL,
    state        TEXT   NOT NULL,
    update_type  TEXT   NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 1,
    from_version TEXT   NOT NULL DEFAULT '',
    reason       TEXT,
    failure      TEXT,
    bytes_done   INTEGER,
    used_delta   INTEGER,
    created_at   INTEGER NOT NULL,
    created_by   TEXT   NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    -- When an unfinished deployment times out if the device reports nothing further.
    deadline     INTEGER
);
CREATE INDEX deployments_device ON deployments (device_seq, id);
CREATE INDEX deployments_artifact ON deployments (artifact_seq) WHERE finished_at IS NULL;
CREATE UNIQUE INDEX deployments_one_active ON deployments (device_seq) WHERE finished_at IS NULL;
CREATE INDEX deployments_deadline ON deployments (deadline) WHERE finished_at IS NULL;

CREATE TABLE deployment_events (
    seq           INTEGER PRIMARY KEY,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    at            INTEGER NOT NULL,
    state         TEXT   NOT NULL,
    reason        TEXT
);
CREATE INDEX deployment_events_deployment ON deployment_events (deployment_id, seq);

-- Signed TUF metadata exactly as served: every root version (clients walk the chain), and the
-- recent versions of targets, snapshot and timestamp.
CREATE TABLE tuf_metadata (
    role       TEXT   NOT NULL,
    version    INTEGER NOT NULL,
    body       BLOB   NOT NULL,
    expires    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (role, version)
);

-- Private keys of the roles signed online (timestamp, snapshot and, unless kept offline, targets).
CREATE TABLE tuf_keys (
    keyid      TEXT   PRIMARY KEY,
    role       TEXT   NOT NULL,
    private    TEXT   NOT NULL,
    created_at INTEGER NOT NULL
);
