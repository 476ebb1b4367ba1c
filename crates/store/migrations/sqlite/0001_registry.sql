-- Device registry, groups, credentials, operator tokens, claim tokens and the audit log.
-- Times are milliseconds since the Unix epoch. Optional text attributes use '' for "none" and
-- last_seen uses 0 for "never" so that every column can be indexed and range-scanned without NULLs.

CREATE TABLE devices (
    seq                 INTEGER PRIMARY KEY,
    id                  TEXT    NOT NULL,
    device_type         TEXT    NOT NULL,
    hw_id               TEXT    NOT NULL DEFAULT '',
    hw_rev              TEXT    NOT NULL DEFAULT '',
    site                TEXT    NOT NULL DEFAULT '',
    region              TEXT    NOT NULL DEFAULT '',
    status              TEXT    NOT NULL,
    firmware            TEXT    NOT NULL DEFAULT '',
    fw_key              BLOB    NOT NULL DEFAULT x'',
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    last_seen           INTEGER NOT NULL DEFAULT 0,
    preauth_secret_hash TEXT,
    pending_nonce_hash  TEXT
);
CREATE UNIQUE INDEX devices_id ON devices (id);
CREATE UNIQUE INDEX devices_live_hw_id ON devices (hw_id)
    WHERE hw_id <> '' AND status NOT IN ('decommissioned', 'rejected');
CREATE INDEX devices_status      ON devices (status);
CREATE INDEX devices_device_type ON devices (device_type);
CREATE INDEX devices_hw_rev      ON devices (hw_rev);
CREATE INDEX devices_site        ON devices (site);
CREATE INDEX devices_region      ON devices (region);
CREATE INDEX devices_fw_key      ON devices (fw_key, seq);
CREATE INDEX devices_last_seen   ON devices (last_seen, seq);
CREATE INDEX devices_created_at  ON devices (created_at, seq);
CREATE INDEX devices_updated_at  ON devices (updated_at, seq);

CREATE TABLE device_tags (
    device_seq INTEGER NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    PRIMARY KEY (device_seq, key)
) WITHOUT ROWID;
CREATE INDEX device_tags_key_value ON device_tags (key, value, device_seq);

CREATE TABLE device_credentials (
    id          TEXT    PRIMARY KEY,
    device_seq  INTEGER NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    secret_hash TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX device_credentials_device ON device_credentials (device_seq);

CREATE TABLE groups (
    name        TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL,
    query       TEXT,
    parent      TEXT    REFERENCES groups (name),
    description TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX groups_parent ON groups (parent);

CREATE TABLE group_members (
    group_name TEXT    NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    device_seq INTEGER NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (group_name, device_seq)
) WITHOUT ROWID;
CREATE INDEX group_members_device ON group_members (device_seq);

CREATE TABLE api_tokens (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    created_by   TEXT    NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
);

CREATE TABLE claim_tokens (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    secret_hash TEXT    NOT NULL UNIQUE,
    device_type TEXT,
    tags        TEXT    NOT NULL DEFAULT '{}',
    group_name  TEXT    REFERENCES groups (name) ON DELETE SET NULL,
    expires_at  INTEGER NOT NULL,
    max_uses    INTEGER,
    uses        INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    actor_name  TEXT    NOT NULL DEFAULT '',
    action      TEXT    NOT NULL,
    target_kind TEXT    NOT NULL,
    target_id   TEXT    NOT NULL,
    before      TEXT,
    after       TEXT
);
CREATE INDEX audit_log_at     ON audit_log (at);
CREATE INDEX audit_log_target ON audit_log (target_kind, target_id, seq);
CREATE INDEX audit_log_actor  ON audit_log (actor, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
