-- Deadlines: something that must happen at a time unless it is cancelled first (an unpaid
-- reservation expires). A deadline is written in the same statement as the events that start
-- it, so it exists exactly when they do, and it survives restarts with the data. A ticker fires
-- due deadlines and deletes each in the same statement as the events its firing appends.
CREATE TABLE deadlines (
    kind        text        NOT NULL,
    key         text        NOT NULL,
    due_at      timestamptz NOT NULL,
    payload     jsonb       NOT NULL,
    -- Failed firings so far, the last error, and when the ticker gave up (then it is left for
    -- an operator, and no longer fired).
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text,
    failed_at   timestamptz,
    PRIMARY KEY (kind, key)
);

CREATE INDEX deadlines_due ON deadlines (kind, due_at) WHERE failed_at IS NULL;
