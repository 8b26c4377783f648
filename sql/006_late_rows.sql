-- Late rows and the continuous aggregates, and when the policy jobs run.
--
-- A refresh policy materialises only its window (the last 2 hours for the per-minute
-- aggregates, the last day for the hourly one); real-time aggregation computes only the
-- buckets after the last materialised one. A row written into an older bucket (consumer
-- lag or an outage longer than the window, a replay, a dlq redrive) would never reach
-- the aggregate. So the sinks note the time range of such rows in late_rows, in the
-- transaction that writes them (streams/adapters/late_rows.py), and the job below
-- refreshes those ranges: per table one range, the span of every late row noted since
-- the last run (coalesced), at most max_window of it per run (bounded), never before
-- what retention keeps of the raw table (a refresh over dropped chunks would empty the
-- aggregate there).
--
-- streamsight_stagger_jobs() gives every policy job of this schema a start second of
-- its own within the minute, on a fixed schedule: started together (all of them about
-- a second after a fresh migration) retention, compression and refreshes deadlocked on
-- the same tables. apply_policies calls it again after it adds a policy.

CREATE TABLE IF NOT EXISTS late_rows (
    table_name  text        PRIMARY KEY,
    lo          timestamptz NOT NULL,
    hi          timestamptz NOT NULL,
    -- Raised by every note: a run removes only the range it saw.
    version     bigint      NOT NULL DEFAULT 1
);

DO $tsdb$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE $sql$
            CREATE OR REPLACE PROCEDURE refresh_late_rows(job_id integer, config jsonb)
            LANGUAGE plpgsql AS $proc$
            DECLARE
                item record;
                aggregate record;
                kept interval;
                since timestamptz;
                upto timestamptz;
                max_window interval := coalesce((config ->> 'max_window')::interval,
                                                INTERVAL '7 days');
            BEGIN
                FOR item IN SELECT table_name, lo, hi, version FROM late_rows
                            ORDER BY table_name LOOP
                    SELECT (j.config ->> 'drop_after')::interval INTO kept
                    FROM timescaledb_information.jobs j
                    WHERE j.proc_name = 'policy_retention'
                      AND j.hypertable_schema = current_schema()
                      AND j.hypertable_name = item.table_name;
                    -- An hour's margin: retention may drop the oldest chunk meanwhile.
                    since := CASE WHEN kept IS NULL THEN item.lo
                                  ELSE greatest(item.lo, now() - kept + INTERVAL '1 hour') END;
                    upto := least(item.hi, since + max_window);
                    IF since <= upto THEN
                        FOR aggregate IN
                            SELECT key AS name, (value #>> '{}')::interval AS width
                            FROM jsonb_each(config -> 'aggregates' -> item.table_name)
                        LOOP
                            -- Whole buckets: a refresh leaves a bucket its window cuts.
                            CALL refresh_continuous_aggregate(
                                aggregate.name::regclass,
                                time_bucket(aggregate.width, since),
                                time_bucket(aggregate.width, upto) + aggregate.width);
                        END LOOP;
                    END IF;
                    IF since > upto OR upto >= item.hi THEN
                        DELETE FROM late_rows
                        WHERE table_name = item.table_name AND version = item.version;
                    ELSE
                        UPDATE late_rows SET lo = upto
                        WHERE table_name = item.table_name AND version = item.version;
                    END IF;
                    COMMIT;
                END LOOP;
            END
            $proc$
        $sql$;

        PERFORM add_job('refresh_late_rows', INTERVAL '1 minute', config => jsonb_build_object(
            'aggregates', jsonb_build_object(
                'api_performance', jsonb_build_object('api_performance_1m', '1 minute',
                                                      'api_performance_1h', '1 hour'),
                'error_events', jsonb_build_object('error_events_1m', '1 minute')),
            'max_window', '7 days'));

        EXECUTE $sql$
            CREATE OR REPLACE FUNCTION streamsight_stagger_jobs() RETURNS void
            LANGUAGE plpgsql AS $fn$
            DECLARE
                job record;
                slot interval;
                first timestamptz := date_trunc('minute', now()) + INTERVAL '1 minute';
            BEGIN
                -- Ours only: other hypertables in the schema keep their schedules.
                -- Refreshes first, then the late rows, compression and retention: the
                -- jobs on one raw table far apart in the minute.
                CREATE TEMP TABLE streamsight_jobs AS
                SELECT j.job_id, j.initial_start,
                       row_number() OVER (ORDER BY
                           array_position(ARRAY['policy_refresh_continuous_aggregate',
                                                'refresh_late_rows', 'policy_compression',
                                                'policy_retention'], j.proc_name::text),
                           coalesce(ca.view_name::text, j.hypertable_name::text)) - 1 AS n
                FROM timescaledb_information.jobs j
                -- A job names the aggregate (TimescaleDB 2.28) or its materialization
                -- hypertable (earlier).
                LEFT JOIN timescaledb_information.continuous_aggregates ca
                  ON (ca.view_schema = j.hypertable_schema
                      AND ca.view_name = j.hypertable_name)
                  OR (ca.materialization_hypertable_schema = j.hypertable_schema
                      AND ca.materialization_hypertable_name = j.hypertable_name)
                WHERE (j.proc_schema = current_schema() AND j.proc_name = 'refresh_late_rows')
                   OR (j.hypertable_schema = current_schema()
                       AND j.proc_name IN ('policy_refresh_continuous_aggregate',
                                           'policy_compression', 'policy_retention')
                       AND coalesce(ca.view_name::text, j.hypertable_name::text) IN (
                           'api_performance', 'error_events', 'insights', 'ai_usage',
                           'api_performance_1m', 'api_performance_1h', 'error_events_1m'));
                slot := INTERVAL '60 seconds' / greatest((SELECT count(*) FROM streamsight_jobs), 1);
                FOR job IN SELECT * FROM streamsight_jobs ORDER BY n LOOP
                    -- Only the second within the minute matters to a fixed schedule.
                    IF job.initial_start IS NULL
                       OR extract(epoch FROM job.initial_start - first)::numeric % 60
                          <> extract(epoch FROM job.n * slot)::numeric % 60 THEN
                        PERFORM alter_job(job.job_id, fixed_schedule => true,
                                          initial_start => first + job.n * slot,
                                          next_start => first + job.n * slot);
                    END IF;
                END LOOP;
                DROP TABLE streamsight_jobs;
            END
            $fn$
        $sql$;
        PERFORM streamsight_stagger_jobs();
    END IF;
END
$tsdb$;
