-- What the recommendations would save: the latest recommendation per entity in the range, and
-- per service and cluster the hourly and 30-day cost change if every one were applied (negative
-- saves money), with how many entities each action concerns.
-- $1, $2: the time range [from, to) as timestamptz.
WITH latest AS (
    SELECT DISTINCT ON (entity_id) entity_id, service, cluster, action,
           cost_change_per_hour, shortfall_prob, confidence
    FROM recommendations
    WHERE ts >= $1::timestamptz AND ts < $2::timestamptz
    ORDER BY entity_id, ts DESC
)
SELECT service,
       cluster,
       count(*) FILTER (WHERE action <> 'HOLD')::int8           AS actions,
       count(*) FILTER (WHERE cost_change_per_hour < 0)::int8   AS saving_actions,
       sum(cost_change_per_hour)                                AS cost_change_per_hour,
       sum(cost_change_per_hour) * 24 * 30                      AS cost_change_30d,
       avg(shortfall_prob)                                      AS mean_shortfall_prob,
       avg(confidence)                                          AS mean_confidence
FROM latest
GROUP BY service, cluster
ORDER BY sum(cost_change_per_hour), service, cluster;
