-- Fleet jobs and remote diagnostics: the job with its per-state counters (updated in the
-- transaction of every state change, so progress is one row read), one execution per target
-- device (the queue, each device's attempt, deadline and answer), diagnostics requests awaiting a
-- device's answer, and the single-use confirmation tokens that guard a remote reboot.

CREATE TABLE jobs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    -- JSON: the target (group, query or device list) and the kind's payload.
    target        TEXT    NOT NULL,
    payload       TEXT,
    max_parallel  BIGINT  NOT NULL,
    timeout_ms    BIGINT  NOT NULL,
    retries       BIGINT  NOT NULL,
    backoff_ms    BIGINT  NOT NULL,
    -- running, completed, canceled.
    state         TEXT    COLLATE "C" NOT NULL,
    n_total       BIGINT  NOT NULL DEFAULT 0,
    n_queued      BIGINT  NOT NULL DEFAULT 0,
    n_in_progress BIGINT  NOT NULL DEFAULT 0,
    n_succeeded   BIGINT  NOT NULL DEFAULT 0,
    n_failed      BIGINT  NOT NULL DEFAULT 0,
    n_timed_out   BIGINT  NOT NULL DEFAULT 0,
    n_canceled    BIGINT  NOT NULL DEFAULT 0,
    n_rejected    BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL,
    created_by    TEXT    NOT NULL,
    updated_at    BIGINT  NOT NULL,
    finished_at   BIGINT
);
CREATE INDEX jobs_state ON jobs (state, id);

CREATE TABLE job_executions (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          BIGINT  NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    device_seq      BIGINT  NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    -- queued, in_progress, succeeded, failed, timed_out, canceled, rejected.
    state           TEXT    COLLATE "C" NOT NULL,
    attempt         BIGINT  NOT NULL DEFAULT 0,
    -- When a queued execution may start (its creation, or the end of a retry's backoff).
    next_attempt_at BIGINT  NOT NULL,
    offered_at      BIGINT,
    -- When the current attempt times out (set while in_progress).
    deadline        BIGINT,
    result          TEXT,
    error           TEXT,
    updated_at      BIGINT  NOT NULL,
    finished_at     BIGINT,
    UNIQUE (job_id, device_seq)
);
-- The queue: a tick takes the due queued executions of one job in order.
CREATE INDEX job_executions_queue ON job_executions (job_id, next_attempt_at, id) WHERE state = 'queued';
-- Timeouts: only executions in progress, by deadline.
CREATE INDEX job_executions_deadline ON job_executions (job_id, deadline) WHERE state = 'in_progress';
-- A device's open executions (its next offer).
CREATE INDEX job_executions_device ON job_executions (device_seq, state);
CREATE INDEX job_executions_list ON job_executions (job_id, id);

CREATE TABLE diag_requests (
    id          TEXT    PRIMARY KEY,
    device_seq  BIGINT  NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    action      TEXT    NOT NULL,
    -- JSON: the action's arguments (`{"lines": N}`).
    args        TEXT    NOT NULL,
    -- pending, delivered, answered, expired.
    state       TEXT    NOT NULL,
    response    TEXT,
    error       TEXT,
    created_by  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    deadline    BIGINT  NOT NULL,
    answered_at BIGINT
);
CREATE INDEX diag_requests_open ON diag_requests (device_seq, created_at) WHERE state IN ('pending', 'delivered');
CREATE INDEX diag_requests_created ON diag_requests (created_at);

CREATE TABLE diag_confirmations (
    -- SHA-256 of the token; the token itself is shown once.
    token_hash  TEXT    PRIMARY KEY,
    device_seq  BIGINT  NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
    action      TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL,
    used_at     BIGINT
);
CREATE INDEX diag_confirmations_expiry ON diag_confirmations (expires_at);
