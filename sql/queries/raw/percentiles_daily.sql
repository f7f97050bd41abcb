-- The same question as ../percentiles_daily.sql asked of the raw table.
SELECT date_trunc('day', ts, 'UTC') AS day, coalesce(service, '') AS service,
       count(*)::int8 AS samples,
       percentile_disc(0.50) WITHIN GROUP (ORDER BY cpu_util) AS cpu_p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY cpu_util) AS cpu_p95,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY cpu_util) AS cpu_p99,
       percentile_disc(0.50) WITHIN GROUP (ORDER BY mem_util) AS mem_p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY mem_util) AS mem_p95,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY mem_util) AS mem_p99
FROM telemetry_raw
WHERE ts >= $1::timestamptz AND ts < $2::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;
