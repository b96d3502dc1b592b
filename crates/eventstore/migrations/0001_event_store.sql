-- The event store of one bounded context: events, the transactional outbox, the inbox.

-- Every event the context ever recorded. `position` orders all events of the store;
-- (aggregate_type, aggregate_id, sequence) is unique: that is the optimistic concurrency check.
CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence > 0),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version > 0),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_aggregate_sequence UNIQUE (aggregate_type, aggregate_id, sequence)
);

-- Events not yet acknowledged by JetStream, written in the same statement as the events.
-- The relay deletes a row once JetStream has acknowledged the event.
CREATE TABLE outbox (
    position bigint PRIMARY KEY
);

-- Messages a consumer has handled, recorded in the same statement as the events the
-- handling appended: a redelivered message finds its row and has no second effect.
CREATE TABLE inbox (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbox_pkey PRIMARY KEY (consumer, event_id)
);

-- Wakes the relay (LISTEN chorus_outbox) when rows arrive in an outbox that held none older:
-- that is when the relay may be idle. While it is busy the outbox is rarely empty and no
-- notification is sent, so commits do not queue on the notification lock. A wake-up lost
-- to a race is made up by the relay's polling.
CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM outbox o WHERE o.position < (SELECT min(n.position) FROM new_rows n)
    ) THEN
        PERFORM pg_notify('chorus_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();
