-- p50 / p95 / p99 of CPU and memory utilization per service per day, from the hourly
-- histograms of the service rollup (exact to the 1 % bin: hourly histograms add up to the
-- day's).
-- Set-based: the sparse histograms (bin << 32 | count) are unnested and their counts summed per
-- day, service and bin, and a quantile is the first bin whose running count reaches q of the
-- day's total. The same answer as hist_quantile(hist_sum(..)), without the PL/pgSQL merge per
-- hourly row (2.4x faster over a week of 5 services: loadgen bench-olap).
-- $1, $2: the time range [from, to) as timestamptz.
WITH hours AS (
    SELECT date_trunc('day', bucket, 'UTC') AS day, service, n, cpu_hist, mem_hist
    FROM telemetry_service_1h
    WHERE bucket >= $1::timestamptz AND bucket < $2::timestamptz
), bins AS (
    SELECT day, service, 0 AS metric, x >> 32 AS bin, sum(x & 4294967295) AS n
    FROM hours, unnest(cpu_hist) AS x
    GROUP BY 1, 2, 4
    UNION ALL
    SELECT day, service, 1, x >> 32, sum(x & 4294967295)
    FROM hours, unnest(mem_hist) AS x
    GROUP BY 1, 2, 4
), running AS (
    SELECT day, service, metric, bin,
           sum(n) OVER (PARTITION BY day, service, metric ORDER BY bin) AS c,
           sum(n) OVER (PARTITION BY day, service, metric)              AS total
    FROM bins
), q AS (
    SELECT day, service,
           (min(bin) FILTER (WHERE metric = 0 AND c >= 0.50 * total) + 0.5)::float8 / 100 AS cpu_p50,
           (min(bin) FILTER (WHERE metric = 0 AND c >= 0.95 * total) + 0.5)::float8 / 100 AS cpu_p95,
           (min(bin) FILTER (WHERE metric = 0 AND c >= 0.99 * total) + 0.5)::float8 / 100 AS cpu_p99,
           (min(bin) FILTER (WHERE metric = 1 AND c >= 0.50 * total) + 0.5)::float8 / 100 AS mem_p50,
           (min(bin) FILTER (WHERE metric = 1 AND c >= 0.95 * total) + 0.5)::float8 / 100 AS mem_p95,
           (min(bin) FILTER (WHERE metric = 1 AND c >= 0.99 * total) + 0.5)::float8 / 100 AS mem_p99
    FROM running
    GROUP BY 1, 2
)
SELECT s.day, s.service, s.samples, q.cpu_p50, q.cpu_p95, q.cpu_p99, q.mem_p50, q.mem_p95, q.mem_p99
FROM (SELECT day, service, sum(n)::int8 AS samples FROM hours GROUP BY 1, 2) s
LEFT JOIN q ON q.day = s.day AND q.service IS NOT DISTINCT FROM s.service
ORDER BY 1, 2;
