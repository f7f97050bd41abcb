-- Anomalies: samples of the range whose CPU utilization is more than 3 standard deviations from
-- the entity's rolling baseline, its mean over the 24 hours before the range (at least 30
-- samples). The baseline comes from the hourly rollup's counts, sums and sums of squares (24
-- rows per entity, whatever the sampling rate; rows written before sums of squares were kept
-- are left out); the points are the range's raw samples (BRIN on ts).
-- $1, $2: the time range [from, to) as timestamptz (whole hours make the baseline exact).
WITH base AS (
    SELECT entity_id,
           sum(cpu_sum) / sum(cpu_n)                                               AS mean,
           sqrt(greatest(sum(cpu_sq) / sum(cpu_n) - (sum(cpu_sum) / sum(cpu_n)) ^ 2, 0)) AS sd,
           sum(cpu_n)                                                              AS history
    FROM telemetry_1h
    WHERE bucket >= $1::timestamptz - interval '24 hours' AND bucket < $1::timestamptz
      AND cpu_n > 0 AND cpu_sq IS NOT NULL
    GROUP BY entity_id
)
SELECT r.entity_id, r.service, r.ts, r.cpu_util AS cpu, b.mean AS rolling_mean, b.sd AS rolling_sd,
       (r.cpu_util - b.mean) / b.sd AS z
FROM telemetry_raw r JOIN base b USING (entity_id)
WHERE r.ts >= $1::timestamptz AND r.ts < $2::timestamptz
  AND b.history >= 30 AND b.sd > 0 AND abs(r.cpu_util - b.mean) > 3 * b.sd
ORDER BY abs((r.cpu_util - b.mean) / b.sd) DESC, r.entity_id, r.ts
LIMIT 1000;
