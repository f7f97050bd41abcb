-- p50 / p95 / p99 of CPU and memory utilization per service per day, from the hourly
-- histograms of the service rollup (exact to the 1 % bin: hourly histograms add up to the
-- day's).
-- $1, $2: the time range [from, to) as timestamptz.
SELECT date_trunc('day', bucket, 'UTC')                 AS day,
       service,
       sum(n)::int8                                     AS samples,
       hist_quantile(hist_sum(cpu_hist), 0.50)          AS cpu_p50,
       hist_quantile(hist_sum(cpu_hist), 0.95)          AS cpu_p95,
       hist_quantile(hist_sum(cpu_hist), 0.99)          AS cpu_p99,
       hist_quantile(hist_sum(mem_hist), 0.50)          AS mem_p50,
       hist_quantile(hist_sum(mem_hist), 0.95)          AS mem_p95,
       hist_quantile(hist_sum(mem_hist), 0.99)          AS mem_p99
FROM telemetry_service_1h
WHERE bucket >= $1::timestamptz AND bucket < $2::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;
