-- The same question as ../anomalies.sql asked of the raw table alone: the baseline from the
-- samples of the 24 hours before the range.
WITH base AS (
    SELECT entity_id, avg(cpu_util) AS mean, stddev_pop(cpu_util) AS sd, count(*) AS history
    FROM telemetry_raw
    WHERE ts >= $1::timestamptz - interval '24 hours' AND ts < $1::timestamptz AND cpu_util IS NOT NULL
    GROUP BY entity_id
)
SELECT r.entity_id, r.service, r.ts, r.cpu_util AS cpu, b.mean AS rolling_mean, b.sd AS rolling_sd,
       (r.cpu_util - b.mean) / b.sd AS z
FROM telemetry_raw r JOIN base b USING (entity_id)
WHERE r.ts >= $1::timestamptz AND r.ts < $2::timestamptz
  AND b.history >= 30 AND b.sd > 0 AND abs(r.cpu_util - b.mean) > 3 * b.sd
ORDER BY abs((r.cpu_util - b.mean) / b.sd) DESC, r.entity_id, r.ts
LIMIT 1000;
