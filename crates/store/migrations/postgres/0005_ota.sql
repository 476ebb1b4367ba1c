-- Over-the-air updates: artifacts (firmware images) and their binary deltas, one device's
-- deployment of an artifact with its step history, and the TUF repository's signed metadata and
-- online keys. Image bytes live in the object store under object_key; rows hold what is needed to
-- find, list and authorise them.

CREATE TABLE artifacts (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           TEXT   COLLATE "C" NOT NULL,
    version        TEXT   COLLATE "C" NOT NULL,
    version_key    BYTEA  NOT NULL,
    -- JSON arrays of strings.
    device_types   TEXT   NOT NULL,
    hw_revs        TEXT   NOT NULL,
    size           BIGINT NOT NULL,
    sha256         TEXT   COLLATE "C" NOT NULL,
    object_key     TEXT   NOT NULL,
    -- Path of the image in the TUF repository's targets (before the hash prefix).
    target_path    TEXT   COLLATE "C" NOT NULL,
    -- JSON object: git_commit, build_id, ci_url.
    provenance     TEXT   NOT NULL,
    release_notes  TEXT   NOT NULL DEFAULT '',
    security_floor TEXT,
    symbols_key    TEXT,
    symbols_size   BIGINT,
    symbols_sha256 TEXT,
    created_at     BIGINT NOT NULL,
    created_by     TEXT   NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX artifacts_name_version ON artifacts (name, version_key);
CREATE UNIQUE INDEX artifacts_target_path ON artifacts (target_path);

CREATE TABLE artifact_deltas (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_seq    BIGINT NOT NULL REFERENCES artifacts (seq) ON DELETE CASCADE,
    to_seq      BIGINT NOT NULL REFERENCES artifacts (seq) ON DELETE CASCADE,
    size        BIGINT NOT NULL,
    sha256      TEXT   COLLATE "C" NOT NULL,
    object_key  TEXT   NOT NULL,
    target_path TEXT   COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    UNIQUE (from_seq, to_seq)
);

CREATE TABLE deployments (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_seq   BIGINT NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    -- NULL once the artifact is deleted; name and version keep the history readable.
    artifact_seq BIGINT REFERENCES artifacts (seq) ON DELETE SET NULL,
    artifact     TEXT   NOT NULL,
    version      TEXT   NOT NULL,
    state        TEXT   COLLATE "C" NOT NULL,
    update_type  TEXT   NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 1,
    from_version TEXT   NOT NULL DEFAULT '',
    reason       TEXT,
    failure      TEXT,
    bytes_done   BIGINT,
    used_delta   BOOLEAN,
    created_at   BIGINT NOT NULL,
    created_by   TEXT   NOT NULL,
    updated_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    -- When an unfinished deployment times out if the device reports nothing further.
    deadline     BIGINT
);
CREATE INDEX deployments_device ON deployments (device_seq, id);
CREATE INDEX deployments_artifact ON deployments (artifact_seq) WHERE finished_at IS NULL;
CREATE UNIQUE INDEX deployments_one_active ON deployments (device_seq) WHERE finished_at IS NULL;
CREATE INDEX deployments_deadline ON deployments (deadline) WHERE finished_at IS NULL;

CREATE TABLE deployment_events (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deployment_id BIGINT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    at            BIGINT NOT NULL,
    state         TEXT   NOT NULL,
    reason        TEXT
);
CREATE INDEX deployment_events_deployment ON deployment_events (deployment_id, seq);

-- Signed TUF metadata exactly as served: every root version (clients walk the chain), and the
-- recent versions of targets, snapshot and timestamp.
CREATE TABLE tuf_metadata (
    role       TEXT   COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    body       BYTEA  NOT NULL,
    expires    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (role, version)
);

-- Private keys of the roles signed online (timestamp, snapshot and, unless kept offline, targets).
CREATE TABLE tuf_keys (
    keyid      TEXT   COLLATE "C" PRIMARY KEY,
    role       TEXT   COLLATE "C" NOT NULL,
    private    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
