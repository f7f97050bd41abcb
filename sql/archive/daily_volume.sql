-- What the archive holds per day: samples, entities, and hours with a file.
SELECT date,
       count(*)                  AS samples,
       count(DISTINCT entity_id) AS entities,
       count(DISTINCT hour)      AS hours
FROM telemetry
GROUP BY date
ORDER BY date
