-- Sealed batches: one row per batch, written by the batcher before the batch is published.
-- The row is the seal decision: after a crash the batcher re-forms exactly these batches.
CREATE TABLE IF NOT EXISTS batches (
    batch_id        uuid        NOT NULL,
    source          text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    first_offset    bigint      NOT NULL,
    last_offset     bigint      NOT NULL,
    event_count     integer     NOT NULL,
    seal_reason     text        NOT NULL,
    status          text        NOT NULL DEFAULT 'SEALED',
    opened_at       timestamptz NOT NULL,
    sealed_at       timestamptz NOT NULL,
    -- Time column: the first event's own timestamp, so a re-formed batch lands on the same key.
    first_event_at  timestamptz NOT NULL,
    last_event_at   timestamptz NOT NULL,
    digest          jsonb       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, first_event_at),
    CONSTRAINT batches_status_check CHECK (status IN ('SEALED', 'ANALYZED', 'FAILED', 'DEAD')),
    CONSTRAINT batches_reason_check CHECK (seal_reason IN ('count', 'age', 'shutdown', 'manual'))
);

-- Recovery reads the batches sealed on a partition after its committed offset.
CREATE INDEX IF NOT EXISTS batches_partition_offset_idx
    ON batches (topic, partition, last_offset);
CREATE INDEX IF NOT EXISTS batches_source_time_idx ON batches (source, first_event_at DESC);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('batches', 'first_event_at',
                                  chunk_time_interval => INTERVAL '1 day',
                                  if_not_exists => TRUE, migrate_data => TRUE);
    END IF;
END
$$;
