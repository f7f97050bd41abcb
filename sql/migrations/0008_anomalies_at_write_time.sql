-- Anomalies scored at write time (docs/design/sink.md, "Anomalies scored at write time").
--
-- In each batch's transaction, right after the hourly rollup merge, the sink scores every CPU
-- sample it writes to telemetry_raw against that entity's baseline: the mean and standard
-- deviation of the 24 hourly rollup rows before the sample's hour (counts, sums and sums of
-- squares, read through the index below; the scoring is the sink's, services/sink/src/
-- anomalies.rs, and the backfill at the end of this file is the same arithmetic in SQL). A
-- sample more than 3 standard deviations away (with at least 30 samples of history and a
-- non-zero deviation) is kept here with its score.
-- The anomaly panel (sql/queries/anomalies.sql) then reads a few hundred rows an hour by time
-- instead of every raw sample of its range.
--
-- A sample is scored once, against what was known when it was written: a late sample for an
-- earlier hour does not re-score later samples. Partitioned by day like telemetry_raw, with its
-- own retention (the sink's `retention.telemetry_anomalies`; the rows are few, so it can keep
-- much longer than the raw table). No uniqueness: a sample delivered twice is twice in
-- telemetry_raw and twice here, so both paths of the panel agree.
--
-- Index: btree on ts (the panel asks for a time range and sorts by score; a few hundred rows
-- an hour, so the btree is small and exact where a BRIN would read whole block ranges).
CREATE TABLE telemetry_anomalies (
    entity_id text        NOT NULL,
    ts        timestamptz NOT NULL,
    service   text,
    cpu       float8      NOT NULL,
    -- The baseline the sample was scored against, and how many samples it summarised.
    mean      float8      NOT NULL,
    sd        float8      NOT NULL CHECK (sd > 0),
    history   int8        NOT NULL CHECK (history >= 30),
    z         float8      NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_anomalies_ts ON telemetry_anomalies (ts);

-- The sink's baseline read: for the entities of a batch it does not know yet (it keeps the
-- last day of those it writes), their hourly rows from 24 hours before the batch's hours on
-- (counts, sums and sums of squares of CPU). Entity first, so a batch of a few entities of a
-- large fleet reads only theirs (one descent per entity, ~26 adjacent entries each). It
-- replaces 0007's index on (bucket, entity_id), whose only reader was the anomaly panel's old
-- baseline over every entity of a time range. Rollup merges change these columns, so they are
-- not HOT updates (as with 0007: the write cost is unchanged).
DROP INDEX telemetry_1h_cpu_baseline;
CREATE INDEX telemetry_1h_entity_cpu_baseline ON telemetry_1h (entity_id, bucket) INCLUDE (cpu_n, cpu_sum, cpu_sq);

-- Backfill: the samples already in telemetry_raw (its retention: days, not months) are scored
-- the same way as the sink scores them, so the panel answers for them after an upgrade. A fresh
-- database does nothing here.
DO $$
DECLARE
    first_day timestamptz;
    last_day  timestamptz;
    d         timestamptz;
BEGIN
    SELECT date_trunc('day', min(ts) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           date_trunc('day', max(ts) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    INTO first_day, last_day FROM telemetry_raw;
    IF first_day IS NULL THEN
        RETURN;
    END IF;
    d := first_day;
    WHILE d <= last_day LOOP
        PERFORM headroom_ensure_partition('telemetry_anomalies'::regclass, d, d + interval '1 day');
        d := d + interval '1 day';
    END LOOP;
    WITH points AS (
        SELECT entity_id, service, ts, cpu_util AS cpu,
               date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS hour
        FROM telemetry_raw WHERE cpu_util IS NOT NULL
    ), keys AS (
        SELECT DISTINCT entity_id, hour FROM points
    ), base AS (
        SELECT entity_id, hour, mean, history,
               -- Rounding noise of a constant series is no deviation (anomalies.rs, VARIANCE_FLOOR).
               CASE WHEN var <= 1e-12 * mean * mean THEN 0 ELSE sqrt(var) END AS sd
        FROM (
            SELECT k.entity_id, k.hour,
                   sum(h.cpu_sum) / sum(h.cpu_n) AS mean,
                   sum(h.cpu_sq) / sum(h.cpu_n) - (sum(h.cpu_sum) / sum(h.cpu_n)) ^ 2 AS var,
                   sum(h.cpu_n) AS history
            FROM keys k
            JOIN telemetry_1h h ON h.entity_id = k.entity_id
                               AND h.bucket >= k.hour - interval '24 hours' AND h.bucket < k.hour
            WHERE h.cpu_n > 0 AND h.cpu_sq IS NOT NULL
            GROUP BY k.entity_id, k.hour
        ) m
    )
    INSERT INTO telemetry_anomalies (entity_id, ts, service, cpu, mean, sd, history, z)
    SELECT p.entity_id, p.ts, p.service, p.cpu, b.mean, b.sd, b.history, (p.cpu - b.mean) / b.sd
    FROM points p JOIN base b ON b.entity_id = p.entity_id AND b.hour = p.hour
    WHERE b.history >= 30 AND b.sd > 0 AND abs(p.cpu - b.mean) > 3 * b.sd;
END
$$;
