-- Hourly aggregates per service and cluster: samples, mean / max / p95 of CPU and memory
-- utilization, and cost in dollars. Reads the service rollup only (one row per service, cluster
-- and hour, whatever the fleet's size).
-- $1, $2: the time range [from, to) as timestamptz.
SELECT bucket,
       service,
       cluster,
       n::int8                                    AS samples,
       cpu_sum / nullif(cpu_n, 0)                 AS cpu_mean,
       cpu_max,
       hist_quantile(cpu_hist, 0.95)              AS cpu_p95,
       mem_sum / nullif(mem_n, 0)                 AS mem_mean,
       mem_max,
       hist_quantile(mem_hist, 0.95)              AS mem_p95,
       cost_usd
FROM telemetry_service_1h
WHERE bucket >= $1::timestamptz AND bucket < $2::timestamptz
ORDER BY bucket, service, cluster;
