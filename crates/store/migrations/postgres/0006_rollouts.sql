-- Staged rollouts: the rollout with its definition and the orchestrator's stored state machine,
-- one row per target device in stratified rank order (the dispatch queue and each device's part),
-- and the decision log, which doubles as the outbox of alerts.

CREATE TABLE rollouts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL,
    artifact_seq BIGINT  REFERENCES artifacts (seq) ON DELETE SET NULL,
    artifact     TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    -- JSON: the target (group, query or device list) and the rollout definition.
    target       TEXT    NOT NULL,
    spec         TEXT    NOT NULL,
    update_type  TEXT    NOT NULL,
    status       TEXT    COLLATE "C" NOT NULL,
    -- JSON: the orchestrator's state machine, rewritten by every tick.
    machine      TEXT    NOT NULL,
    seed         BIGINT  NOT NULL,
    -- Devices updated at or after this time are checked for joining a dynamic target.
    joined_check BIGINT  NOT NULL,
    -- When crashes were last totalled for the sequential crash test (at most once a minute).
    crash_checked_at BIGINT,
    created_at   BIGINT  NOT NULL,
    created_by   TEXT    NOT NULL,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX rollouts_status ON rollouts (status, id);

CREATE TABLE rollout_devices (
    rollout_id    BIGINT  NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_seq    BIGINT  NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    rank          DOUBLE PRECISION NOT NULL,
    -- queued, updating, retry, succeeded, failed, rolled_back, timed_out, rejected, skipped,
    -- canceled, revert_queued, reverting, reverted, revert_failed.
    state         TEXT    COLLATE "C" NOT NULL,
    -- Held back on the old version as the canary analysis's baseline (the last ranks).
    baseline      BIGINT  NOT NULL DEFAULT 0,
    -- Among the canary devices whose heartbeats the analysis reads (a bounded, stable sample).
    analysis      BIGINT  NOT NULL DEFAULT 0,
    attempt       BIGINT  NOT NULL DEFAULT 0,
    retry_at      BIGINT,
    deployment_id BIGINT,
    -- The version the device ran before (what a rollback puts back).
    from_version  TEXT,
    -- When the device finished its update (succeeded devices: when it started running the release).
    finished_at   BIGINT,
    reason        TEXT,
    -- 1 when its deployment reached an outcome the orchestrator has not yet counted.
    changed       BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, device_seq)
);
CREATE INDEX rollout_devices_queue ON rollout_devices (rollout_id, state, rank);
CREATE INDEX rollout_devices_changed ON rollout_devices (rollout_id) WHERE changed = 1;
CREATE INDEX rollout_devices_retry ON rollout_devices (rollout_id, retry_at) WHERE state = 'retry';
CREATE INDEX rollout_devices_device ON rollout_devices (device_seq);

CREATE TABLE rollout_decisions (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id BIGINT  NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    at         BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    phase      BIGINT  NOT NULL,
    message    TEXT    NOT NULL,
    evidence   TEXT,
    alert      BIGINT  NOT NULL,
    delivered  BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX rollout_decisions_rollout ON rollout_decisions (rollout_id, seq);
CREATE INDEX rollout_decisions_outbox ON rollout_decisions (seq) WHERE alert = 1 AND delivered = 0;

ALTER TABLE deployments ADD COLUMN rollout_id BIGINT  REFERENCES rollouts (id) ON DELETE SET NULL;
-- A rollout's per-step silence limit, and when the whole attempt times out.
ALTER TABLE deployments ADD COLUMN step_timeout BIGINT;
ALTER TABLE deployments ADD COLUMN expires_at BIGINT;
