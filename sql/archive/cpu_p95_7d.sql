-- CPU p95 per entity over the last 7 days of the archive (ending at its newest sample, so that
-- an archived trace from the past answers too), with the sample count and the peak.
SELECT entity_id,
       count(*)                                   AS samples,
       approx_percentile_cont(cpu_util, 0.95)     AS cpu_p95,
       max(cpu_util)                              AS cpu_max
FROM telemetry
WHERE ts > (SELECT max(ts) FROM telemetry) - INTERVAL '7 days'
GROUP BY entity_id
ORDER BY cpu_p95 DESC, entity_id
