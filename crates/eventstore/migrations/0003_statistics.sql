-- No statement filters or joins on an event's payload or metadata, or on a deadline's payload
-- or error: ANALYZE skips them (sampling and sorting these documents was most of its work on the events).
ALTER TABLE events
    ALTER COLUMN payload SET STATISTICS 0,
    ALTER COLUMN metadata SET STATISTICS 0;
ALTER TABLE deadlines
    ALTER COLUMN payload SET STATISTICS 0,
    ALTER COLUMN last_error SET STATISTICS 0;
