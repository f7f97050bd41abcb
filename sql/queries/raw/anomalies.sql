-- The same question as ../anomalies.sql asked of the raw table (per-minute means computed from
-- the samples at query time).
WITH m AS (
    SELECT entity_id, max(service) AS service, date_trunc('minute', ts, 'UTC') AS bucket, avg(cpu_util) AS cpu
    FROM telemetry_raw
    WHERE ts >= $1::timestamptz - interval '1 hour' AND ts < $2::timestamptz AND cpu_util IS NOT NULL
    GROUP BY 1, 3
), w AS (
    SELECT entity_id, service, bucket, cpu,
           avg(cpu) OVER h AS rolling_mean, stddev_samp(cpu) OVER h AS rolling_sd, count(cpu) OVER h AS history
    FROM m
    WINDOW h AS (PARTITION BY entity_id ORDER BY bucket
                 RANGE BETWEEN interval '1 hour' PRECEDING AND interval '1 minute' PRECEDING)
)
SELECT entity_id, service, bucket, cpu, rolling_mean, rolling_sd, (cpu - rolling_mean) / rolling_sd AS z
FROM w
WHERE bucket >= $1::timestamptz AND history >= 30 AND rolling_sd > 0 AND abs(cpu - rolling_mean) > 3 * rolling_sd
ORDER BY abs((cpu - rolling_mean) / rolling_sd) DESC
LIMIT 1000;
