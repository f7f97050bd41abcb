-- The anomaly query's baseline (sql/queries/anomalies.sql) sums cpu_n, cpu_sum and cpu_sq of
-- every entity's last 24 hourly rows. Hourly rows are wide (two histograms, ~800 bytes), so the
-- heap holds about ten to a page and the BRIN scan read ~4,800 pages for 2,000 entities; this
-- covering btree answers it by an index-only scan (~40 bytes an entry; hours older than the
-- current one are all-visible once autovacuum has passed). The cost: rollup merges change
-- indexed columns, so they are not HOT updates (measured by loadgen bench-olap's fill).
-- On a large existing table this build blocks the sink's writes while it runs.
CREATE INDEX telemetry_1h_cpu_baseline ON telemetry_1h (bucket, entity_id) INCLUDE (cpu_n, cpu_sum, cpu_sq);
