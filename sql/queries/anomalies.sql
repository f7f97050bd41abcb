-- Anomalies: minutes whose mean CPU utilization is more than 3 standard deviations from the
-- entity's rolling mean over the previous hour (at least 30 minutes of history). Reads the
-- 1-minute rollup; the window starts an hour before $1 so the first minutes have history.
-- $1, $2: the time range [from, to) as timestamptz.
WITH m AS (
    SELECT entity_id, service, bucket, cpu_sum / nullif(cpu_n, 0) AS cpu
    FROM telemetry_1m
    WHERE bucket >= $1::timestamptz - interval '1 hour' AND bucket < $2::timestamptz AND cpu_n > 0
), w AS (
    SELECT entity_id, service, bucket, cpu,
           avg(cpu)         OVER h AS rolling_mean,
           stddev_samp(cpu) OVER h AS rolling_sd,
           count(cpu)       OVER h AS history
    FROM m
    WINDOW h AS (PARTITION BY entity_id ORDER BY bucket
                 RANGE BETWEEN interval '1 hour' PRECEDING AND interval '1 minute' PRECEDING)
)
SELECT entity_id, service, bucket, cpu, rolling_mean, rolling_sd,
       (cpu - rolling_mean) / rolling_sd AS z
FROM w
WHERE bucket >= $1::timestamptz AND history >= 30 AND rolling_sd > 0
  AND abs(cpu - rolling_mean) > 3 * rolling_sd
ORDER BY abs((cpu - rolling_mean) / rolling_sd) DESC
LIMIT 1000;
