-- What Grafana's panels read: per-minute and per-hour request statistics and per-minute
-- error counts. With TimescaleDB these are continuous aggregates (real-time: the buckets
-- not yet materialised are computed from the raw rows at query time) with refresh,
-- retention and compression policies. On plain PostgreSQL they are ordinary views with the
-- same names, columns and types, computed from the tables on every query.
--
--   api_performance_1m, api_performance_1h
--       bucket timestamptz (UTC-aligned start), source text, route text (NULL kept),
--       count bigint, errors bigint (rows with success = false),
--       mean_ms, max_ms, p50_ms, p95_ms, p99_ms double precision (percentile_cont)
--   error_events_1m
--       bucket timestamptz, source text, type text, count bigint
--
-- The hourly aggregate is built from the raw rows, not from the minutes: percentiles do
-- not combine. Continuous aggregates are created WITH NO DATA (a migration is one
-- transaction); the refresh policies fill them within minutes of start-up.
--
-- Retention and compression below are defaults that need no configuration;
-- streams/adapters/policies.py (apply_policies) resets them from the settings.

DO $tsdb$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE $sql$
            CREATE MATERIALIZED VIEW IF NOT EXISTS api_performance_1m
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
                   source,
                   route,
                   count(*) AS count,
                   count(*) FILTER (WHERE NOT success) AS errors,
                   avg(duration_ms) AS mean_ms,
                   max(duration_ms) AS max_ms,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms
            FROM api_performance
            GROUP BY 1, source, route
            WITH NO DATA
        $sql$;
        EXECUTE $sql$
            CREATE MATERIALIZED VIEW IF NOT EXISTS api_performance_1h
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
                   source,
                   route,
                   count(*) AS count,
                   count(*) FILTER (WHERE NOT success) AS errors,
                   avg(duration_ms) AS mean_ms,
                   max(duration_ms) AS max_ms,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms
            FROM api_performance
            GROUP BY 1, source, route
            WITH NO DATA
        $sql$;
        EXECUTE $sql$
            CREATE MATERIALIZED VIEW IF NOT EXISTS error_events_1m
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
                   source,
                   type,
                   count(*) AS count
            FROM error_events
            GROUP BY 1, source, type
            WITH NO DATA
        $sql$;

        -- Refresh: the recent past, repeatedly. Real-time aggregation covers the rest, so
        -- end_offset only keeps the still-filling bucket out of the materialisation.
        -- Every window is far inside the raw tables' retention, so a refresh never sees
        -- raw chunks that retention dropped (which would empty the aggregate there).
        PERFORM add_continuous_aggregate_policy('api_performance_1m',
            start_offset => INTERVAL '2 hours', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);
        PERFORM add_continuous_aggregate_policy('api_performance_1h',
            start_offset => INTERVAL '1 day', end_offset => INTERVAL '1 hour',
            schedule_interval => INTERVAL '15 minutes', if_not_exists => TRUE);
        PERFORM add_continuous_aggregate_policy('error_events_1m',
            start_offset => INTERVAL '2 hours', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);

        -- Compression: segments per source (what dashboards filter on), newest first. The
        -- key's id column is in the order as well, as TimescaleDB asks of unique-key columns:
        -- a late replay's ON CONFLICT check into a compressed chunk then opens only the
        -- batches whose time and id ranges can hold the row.
        ALTER TABLE api_performance SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'source',
            timescaledb.compress_orderby = 'time DESC, event_id');
        ALTER TABLE error_events SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'source',
            timescaledb.compress_orderby = 'time DESC, error_id');
        ALTER TABLE insights SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'source',
            timescaledb.compress_orderby = 'window_start DESC, insight_id');
        ALTER TABLE ai_usage SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'model',
            timescaledb.compress_orderby = 'at DESC, request_id');
        PERFORM add_compression_policy('api_performance', INTERVAL '7 days', if_not_exists => TRUE);
        PERFORM add_compression_policy('error_events', INTERVAL '7 days', if_not_exists => TRUE);
        PERFORM add_compression_policy('insights', INTERVAL '7 days', if_not_exists => TRUE);
        PERFORM add_compression_policy('ai_usage', INTERVAL '7 days', if_not_exists => TRUE);

        -- Retention: raw rows go first, the aggregates that summarise them stay longer.
        PERFORM add_retention_policy('api_performance', INTERVAL '30 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('error_events', INTERVAL '90 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('insights', INTERVAL '365 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('ai_usage', INTERVAL '365 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('api_performance_1m', INTERVAL '90 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('api_performance_1h', INTERVAL '730 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('error_events_1m', INTERVAL '365 days', if_not_exists => TRUE);
    ELSE
        -- Plain PostgreSQL: the same names as views. Buckets are truncated in UTC, as
        -- time_bucket does, whatever the session's time zone.
        EXECUTE $sql$
            CREATE OR REPLACE VIEW api_performance_1m AS
            SELECT date_trunc('minute', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                   source,
                   route,
                   count(*) AS count,
                   count(*) FILTER (WHERE NOT success) AS errors,
                   avg(duration_ms) AS mean_ms,
                   max(duration_ms) AS max_ms,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms
            FROM api_performance
            GROUP BY 1, source, route
        $sql$;
        EXECUTE $sql$
            CREATE OR REPLACE VIEW api_performance_1h AS
            SELECT date_trunc('hour', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                   source,
                   route,
                   count(*) AS count,
                   count(*) FILTER (WHERE NOT success) AS errors,
                   avg(duration_ms) AS mean_ms,
                   max(duration_ms) AS max_ms,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms
            FROM api_performance
            GROUP BY 1, source, route
        $sql$;
        EXECUTE $sql$
            CREATE OR REPLACE VIEW error_events_1m AS
            SELECT date_trunc('minute', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                   source,
                   type,
                   count(*) AS count
            FROM error_events
            GROUP BY 1, source, type
        $sql$;
    END IF;
END
$tsdb$;
