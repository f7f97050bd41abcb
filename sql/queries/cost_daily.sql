-- Cost per service and cluster per day in dollars (each sample's hourly price times the
-- sampling interval it stands for, summed by the sink into the service rollup).
-- $1, $2: the time range [from, to) as timestamptz.
SELECT date_trunc('day', bucket, 'UTC')          AS day,
       service,
       cluster,
       sum(n)::int8                              AS samples,
       sum(cost_usd)                             AS cost_usd
FROM telemetry_service_1h
WHERE bucket >= $1::timestamptz AND bucket < $2::timestamptz
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
