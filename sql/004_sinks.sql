-- The sinks' tables: what Grafana reads. Hypertables with TimescaleDB, ordinary tables on
-- plain PostgreSQL; same columns, keys and indexes either way.
--
-- Every unique key holds the table's time column (TimescaleDB requires it), and both parts
-- of every key are deterministic, so a replayed or retried write is a conflict that
-- INSERT ... ON CONFLICT DO NOTHING drops instead of a second row.

-- One row per timed operation (an event with a duration). Key: the event's id and time.
CREATE TABLE IF NOT EXISTS api_performance (
    time         timestamptz      NOT NULL,
    source       text             NOT NULL,
    route        text,
    method       text,
    status_code  integer,
    duration_ms  double precision NOT NULL,
    success      boolean          NOT NULL,
    event_id     text             NOT NULL,
    CONSTRAINT api_performance_pkey PRIMARY KEY (event_id, time)
);

-- One row per error: from an event (event_id set) or from our own work (event_id NULL,
-- batch_id usually set, e.g. an analysis that failed for good).
--
-- error_id is the row's deterministic identity, computed here so that every writer agrees:
--   'event/<event_id>'                          for an error event (one row per event);
--   'derived/<md5(batch_id, source, type, message)>' otherwise.
-- Key: (error_id, time). Writers leave error_id out of their column list (it is generated).
-- For a row without event_id to be written once, its writer must give it a deterministic
-- time and message as well (e.g. the batch's first event time, not now()).
CREATE TABLE IF NOT EXISTS error_events (
    time      timestamptz NOT NULL,
    source    text        NOT NULL,
    type      text        NOT NULL,
    message   text        NOT NULL,
    event_id  text,
    batch_id  uuid,
    error_id  text        NOT NULL GENERATED ALWAYS AS (
        CASE
            WHEN event_id IS NOT NULL THEN 'event/' || event_id
            ELSE 'derived/' || md5(
                coalesce(batch_id::text, '') || chr(31) || source || chr(31) || type
                || chr(31) || message
            )
        END
    ) STORED,
    CONSTRAINT error_events_pkey PRIMARY KEY (error_id, time)
);

-- One row per insight. Time column: window_start (the batch's first event time), which is
-- the same on every retry and replay; created_at is not (it is when this copy was made).
-- Key: (insight_id, window_start); insight_id is uuid5(batch_id, analyzer).
CREATE TABLE IF NOT EXISTS insights (
    insight_id         uuid             NOT NULL,
    batch_id           uuid             NOT NULL,
    source             text             NOT NULL,
    window_start       timestamptz      NOT NULL,
    window_end         timestamptz      NOT NULL,
    summary            text             NOT NULL,
    severity           text             NOT NULL,
    confidence         double precision NOT NULL,
    patterns           jsonb            NOT NULL DEFAULT '[]',
    anomalies          jsonb            NOT NULL DEFAULT '[]',
    recommendations    jsonb            NOT NULL DEFAULT '[]',
    analyzer           text             NOT NULL,
    prompt_tokens      integer          NOT NULL DEFAULT 0,
    completion_tokens  integer          NOT NULL DEFAULT 0,
    cost_usd           double precision NOT NULL DEFAULT 0,
    latency_ms         double precision NOT NULL DEFAULT 0,
    created_at         timestamptz      NOT NULL,
    CONSTRAINT insights_pkey PRIMARY KEY (insight_id, window_start),
    CONSTRAINT insights_severity_check CHECK (severity IN ('info', 'warning', 'critical'))
);

-- One row per call to an AI provider, whatever came of it. Time column: at (when the call
-- was made). Key: (request_id, at); request_id is uuid5(batch_id, analyzer, attempt).
-- A replay of insights/errors carries the same `at`, so it adds nothing; a call that is
-- really made again (the analyst crashed before its result was durable and redid it) has a
-- new `at` and gets its own row on purpose: the provider billed both calls.
CREATE TABLE IF NOT EXISTS ai_usage (
    request_id         uuid             NOT NULL,
    batch_id           uuid             NOT NULL,
    analyzer           text             NOT NULL,
    model              text             NOT NULL,
    attempt            integer          NOT NULL,
    outcome            text             NOT NULL,
    prompt_tokens      integer          NOT NULL DEFAULT 0,
    completion_tokens  integer          NOT NULL DEFAULT 0,
    cost_usd           double precision NOT NULL DEFAULT 0,
    latency_ms         double precision NOT NULL DEFAULT 0,
    at                 timestamptz      NOT NULL,
    error              text,
    CONSTRAINT ai_usage_pkey PRIMARY KEY (request_id, at)
);

-- Hypertables before the secondary indexes, so that the indexes are made on every chunk.
-- create_default_indexes => FALSE: the indexes below are the same on both paths.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('api_performance', 'time',
                                  chunk_time_interval => INTERVAL '1 day',
                                  create_default_indexes => FALSE,
                                  if_not_exists => TRUE, migrate_data => TRUE);
        PERFORM create_hypertable('error_events', 'time',
                                  chunk_time_interval => INTERVAL '1 day',
                                  create_default_indexes => FALSE,
                                  if_not_exists => TRUE, migrate_data => TRUE);
        PERFORM create_hypertable('insights', 'window_start',
                                  chunk_time_interval => INTERVAL '7 days',
                                  create_default_indexes => FALSE,
                                  if_not_exists => TRUE, migrate_data => TRUE);
        PERFORM create_hypertable('ai_usage', 'at',
                                  chunk_time_interval => INTERVAL '7 days',
                                  create_default_indexes => FALSE,
                                  if_not_exists => TRUE, migrate_data => TRUE);
    END IF;
END
$$;

-- Grafana: time ranges, optionally narrowed to a source and a route / an error type.
CREATE INDEX IF NOT EXISTS api_performance_time_idx ON api_performance (time DESC);
CREATE INDEX IF NOT EXISTS api_performance_source_route_time_idx
    ON api_performance (source, route, time DESC);

CREATE INDEX IF NOT EXISTS error_events_time_idx ON error_events (time DESC);
CREATE INDEX IF NOT EXISTS error_events_source_type_time_idx
    ON error_events (source, type, time DESC);
CREATE INDEX IF NOT EXISTS error_events_batch_idx
    ON error_events (batch_id, time DESC) WHERE batch_id IS NOT NULL;

CREATE INDEX IF NOT EXISTS insights_time_idx ON insights (window_start DESC);
CREATE INDEX IF NOT EXISTS insights_source_time_idx ON insights (source, window_start DESC);
CREATE INDEX IF NOT EXISTS insights_batch_idx ON insights (batch_id);

CREATE INDEX IF NOT EXISTS ai_usage_time_idx ON ai_usage (at DESC);
CREATE INDEX IF NOT EXISTS ai_usage_model_time_idx ON ai_usage (model, at DESC);
CREATE INDEX IF NOT EXISTS ai_usage_batch_idx ON ai_usage (batch_id);
