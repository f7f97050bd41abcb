-- The same question as ../hourly_by_service.sql asked of the raw table (no rollups), for the
-- OLAP benchmark's comparison. Cost assumes the default 5-minute sampling interval.
SELECT date_trunc('hour', ts, 'UTC') AS bucket,
       coalesce(service, '') AS service, coalesce(cluster, '') AS cluster,
       count(*)::int8 AS samples,
       avg(cpu_util) AS cpu_mean, max(cpu_util) AS cpu_max,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY cpu_util) AS cpu_p95,
       avg(mem_util) AS mem_mean, max(mem_util) AS mem_max,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY mem_util) AS mem_p95,
       sum(cost_per_hour) * 300 / 3600 AS cost_usd
FROM telemetry_raw
WHERE ts >= $1::timestamptz AND ts < $2::timestamptz
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
