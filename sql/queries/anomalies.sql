-- Anomalies: CPU samples of the range more than 3 standard deviations from their entity's
-- rolling baseline, the mean over the 24 hours before the sample's hour (at least 30 samples).
-- The sink scores every sample as it writes it, against the hourly rollup's counts, sums and
-- sums of squares of those 24 hours, and keeps only the anomalies (telemetry_anomalies,
-- sql/migrations/0008): the panel reads a few hundred rows an hour by time. A sample is scored
-- once, against what was known when it was written; a late sample for an earlier hour does not
-- re-score the samples after it.
-- $1, $2: the time range [from, to) as timestamptz.
SELECT entity_id, service, ts, cpu, mean AS rolling_mean, sd AS rolling_sd, z
FROM telemetry_anomalies
WHERE ts >= $1::timestamptz AND ts < $2::timestamptz
ORDER BY abs(z) DESC, entity_id, ts
LIMIT 1000;
