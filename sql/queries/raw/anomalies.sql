-- The same question as ../anomalies.sql asked of the raw table alone: each sample of the range
-- against the raw samples of the 24 hours before its hour (UTC).
WITH points AS (
    SELECT entity_id, service, ts, cpu_util,
           date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS hour
    FROM telemetry_raw
    WHERE ts >= $1::timestamptz AND ts < $2::timestamptz AND cpu_util IS NOT NULL
), keys AS (
    SELECT DISTINCT entity_id, hour FROM points
), base AS (
    SELECT k.entity_id, k.hour, avg(r.cpu_util) AS mean, stddev_pop(r.cpu_util) AS sd, count(*) AS history
    FROM keys k
    JOIN telemetry_raw r ON r.entity_id = k.entity_id AND r.ts >= k.hour - interval '24 hours' AND r.ts < k.hour
    WHERE r.ts >= $1::timestamptz - interval '25 hours' AND r.ts < $2::timestamptz AND r.cpu_util IS NOT NULL
    GROUP BY k.entity_id, k.hour
)
SELECT p.entity_id, p.service, p.ts, p.cpu_util AS cpu, b.mean AS rolling_mean, b.sd AS rolling_sd,
       (p.cpu_util - b.mean) / b.sd AS z
FROM points p JOIN base b ON b.entity_id = p.entity_id AND b.hour = p.hour
WHERE b.history >= 30 AND b.sd > 0 AND abs(p.cpu_util - b.mean) > 3 * b.sd
ORDER BY abs((p.cpu_util - b.mean) / b.sd) DESC, p.entity_id, p.ts
LIMIT 1000;
