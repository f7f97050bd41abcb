-- The same question as ../cost_daily.sql asked of the raw table (5-minute sampling interval).
SELECT date_trunc('day', ts, 'UTC') AS day, coalesce(service, '') AS service, coalesce(cluster, '') AS cluster,
       count(*)::int8 AS samples, sum(cost_per_hour) * 300 / 3600 AS cost_usd
FROM telemetry_raw
WHERE ts >= $1::timestamptz AND ts < $2::timestamptz
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
