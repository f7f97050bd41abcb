-- The tables the sink writes, the rollups the dashboard reads, and the sink's offsets.
--
-- Partitioning: every table that grows with the fleet is declaratively partitioned by RANGE on
-- its event-time column (`ts`, or `bucket` for rollups). One partition covers one UTC day
-- (one UTC month for the 1-hour rollup). The sink creates partitions ahead of the data and on
-- demand for late or replayed data (headroom_ensure_partition), and its maintenance task drops
-- partitions entirely past each table's retention (headroom_drop_partitions): dropping a
-- partition is a metadata operation, where DELETE would rewrite and bloat the table.
--
-- Indexes, chosen for the queries in sql/queries/:
--   * BRIN on the time column of every partitioned table: a few kilobytes per partition, and
--     time-range scans (the "last N hours/days" of every dashboard query) skip whole block
--     ranges because the sink appends in roughly time order.
--   * btree (entity_id, ts) on raw telemetry and forecasts: one entity's recent history (the
--     anomaly query, the API's per-entity view) without scanning a partition.
--   * rollups: the primary key (entity_id, bucket) is the ON CONFLICT target of the
--     incremental merge and serves per-entity lookups; BRIN on bucket serves the per-service
--     and per-cluster aggregations, which read every entity of a time range anyway.
--
-- Utilization percentiles are kept as sparse histograms of 1 % bins (int8[]: one element per
-- non-empty bin, `bin << 32 | count`; bin i counts values in [i/100, (i+1)/100), bin 100
-- everything >= 1.0). They merge exactly by adding counts, so a rollup row can take late data,
-- and a day's p95 per service is computed from hourly histograms (hist_sum + hist_quantile) to
-- within half a percentage point. A minute with one sample stores one element.

-- Histograms -------------------------------------------------------------------------------

CREATE FUNCTION hist_merge(a int8[], b int8[]) RETURNS int8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE (SELECT array_agg((bin << 32) | c ORDER BY bin)
              FROM (SELECT x >> 32 AS bin, sum(x & 4294967295)::int8 AS c
                    FROM unnest(a || b) AS x GROUP BY 1) s)
    END
$$;

CREATE AGGREGATE hist_sum(int8[]) (SFUNC = hist_merge, STYPE = int8[], PARALLEL = SAFE);

-- The q-quantile of a histogram, as the middle of the bin where the cumulative count reaches
-- q of the total; NULL for an empty or missing histogram.
CREATE FUNCTION hist_quantile(h int8[], q float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (bin + 0.5) / 100.0
    FROM (SELECT x >> 32 AS bin,
                 sum(x & 4294967295) OVER (ORDER BY x >> 32) AS cum,
                 sum(x & 4294967295) OVER () AS total
          FROM unnest(h) AS x) s
    WHERE total > 0 AND cum >= q * total
    ORDER BY bin
    LIMIT 1
$$;

-- Partition management ---------------------------------------------------------------------

-- Creates the partition of `parent` for [lo, hi) unless it exists; returns true if created.
CREATE FUNCTION headroom_ensure_partition(parent regclass, lo timestamptz, hi timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    name text := format('%s_p%s', parent::text, to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD'));
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                   name, parent, lo, hi);
    RETURN true;
END
$$;

-- The partitions of `parent` with their bounds.
CREATE FUNCTION headroom_partitions(parent regclass)
RETURNS TABLE (partition regclass, lo timestamptz, hi timestamptz) LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent
$$;

-- Drops every partition of `parent` whose upper bound is at or before `before`; returns how
-- many were dropped.
CREATE FUNCTION headroom_drop_partitions(parent regclass, before timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN SELECT partition FROM headroom_partitions(parent) WHERE hi <= before LOOP
        EXECUTE format('DROP TABLE %s', r.partition);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Raw telemetry (short retention) ----------------------------------------------------------

CREATE TABLE telemetry_raw (
    entity_id      text        NOT NULL,
    ts             timestamptz NOT NULL,
    service        text,
    cluster        text,
    cpu_util       float8 CHECK (cpu_util >= 0),
    mem_util       float8 CHECK (mem_util >= 0),
    net_in_bps     float8 CHECK (net_in_bps >= 0),
    net_out_bps    float8 CHECK (net_out_bps >= 0),
    disk_read_bps  float8 CHECK (disk_read_bps >= 0),
    disk_write_bps float8 CHECK (disk_write_bps >= 0),
    cpu_cores      float8 CHECK (cpu_cores >= 0),
    mem_bytes      float8 CHECK (mem_bytes >= 0),
    replicas       int4   CHECK (replicas >= 0),
    cost_per_hour  float8 CHECK (cost_per_hour >= 0),
    scale_event    boolean,
    labels         jsonb,
    -- Where the row came from: (partition, offset) is unique per topic, which is how the
    -- exactly-once tests prove there are no duplicates.
    src_partition  int4        NOT NULL,
    src_offset     int8        NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_raw_ts_brin ON telemetry_raw USING brin (ts);
CREATE INDEX telemetry_raw_entity_ts ON telemetry_raw (entity_id, ts);

-- Rollups (1 minute, 1 hour) ---------------------------------------------------------------
-- Per metric: count of samples that had it, sum, min, max (mean = sum / n). CPU and memory
-- utilization also keep a histogram, from which p95 is materialised.

CREATE TABLE telemetry_1m (
    entity_id     text        NOT NULL,
    bucket        timestamptz NOT NULL,
    service       text,
    cluster       text,
    n             int4        NOT NULL,
    cpu_n int4 NOT NULL, cpu_sum float8, cpu_min float8, cpu_max float8,
    mem_n int4 NOT NULL, mem_sum float8, mem_min float8, mem_max float8,
    net_in_n int4 NOT NULL, net_in_sum float8, net_in_min float8, net_in_max float8,
    net_out_n int4 NOT NULL, net_out_sum float8, net_out_min float8, net_out_max float8,
    disk_read_n int4 NOT NULL, disk_read_sum float8, disk_read_min float8, disk_read_max float8,
    disk_write_n int4 NOT NULL, disk_write_sum float8, disk_write_min float8, disk_write_max float8,
    cost_n int4 NOT NULL, cost_sum float8, cost_min float8, cost_max float8,
    -- Dollars: each sample's hourly price times the sampling interval it stands for.
    cost_usd      float8      NOT NULL,
    cpu_cores_max float8,
    mem_bytes_max float8,
    replicas_max  int4,
    scale_events  int4        NOT NULL,
    cpu_hist      int8[],
    mem_hist      int8[],
    cpu_p95       float8 GENERATED ALWAYS AS (hist_quantile(cpu_hist, 0.95)) STORED,
    mem_p95       float8 GENERATED ALWAYS AS (hist_quantile(mem_hist, 0.95)) STORED,
    PRIMARY KEY (entity_id, bucket)
) PARTITION BY RANGE (bucket);
CREATE INDEX telemetry_1m_bucket_brin ON telemetry_1m USING brin (bucket);

CREATE TABLE telemetry_1h (LIKE telemetry_1m INCLUDING GENERATED INCLUDING CONSTRAINTS,
                           PRIMARY KEY (entity_id, bucket))
    PARTITION BY RANGE (bucket);
CREATE INDEX telemetry_1h_bucket_brin ON telemetry_1h USING brin (bucket);

-- Per service and cluster and hour: the grain of the dashboard's group-bys, so that they read
-- (services x clusters x hours) rows whatever the fleet's size. Entities without a service or
-- cluster are grouped under ''. Same statistics as the entity rollups (distinct entity counts do
-- not merge: count them in telemetry_1h).
CREATE TABLE telemetry_service_1h (
    service       text        NOT NULL,
    cluster       text        NOT NULL,
    bucket        timestamptz NOT NULL,
    n             int4        NOT NULL,
    cpu_n int4 NOT NULL, cpu_sum float8, cpu_min float8, cpu_max float8,
    mem_n int4 NOT NULL, mem_sum float8, mem_min float8, mem_max float8,
    net_in_n int4 NOT NULL, net_in_sum float8, net_in_min float8, net_in_max float8,
    net_out_n int4 NOT NULL, net_out_sum float8, net_out_min float8, net_out_max float8,
    disk_read_n int4 NOT NULL, disk_read_sum float8, disk_read_min float8, disk_read_max float8,
    disk_write_n int4 NOT NULL, disk_write_sum float8, disk_write_min float8, disk_write_max float8,
    cost_n int4 NOT NULL, cost_sum float8, cost_min float8, cost_max float8,
    cost_usd      float8      NOT NULL,
    cpu_cores_max float8,
    mem_bytes_max float8,
    replicas_max  int4,
    scale_events  int4        NOT NULL,
    cpu_hist      int8[],
    mem_hist      int8[],
    PRIMARY KEY (service, cluster, bucket)
) PARTITION BY RANGE (bucket);
CREATE INDEX telemetry_service_1h_bucket_brin ON telemetry_service_1h USING brin (bucket);

-- Feature stream summary (per entity and hour): volume and data quality ----------------------

CREATE TABLE features_1h (
    entity_id    text        NOT NULL,
    bucket       timestamptz NOT NULL,
    feature_set  text        NOT NULL,
    n            int4        NOT NULL,
    imputed_n    int4        NOT NULL,  -- vectors with at least one imputed input
    scale_events int4        NOT NULL,
    first_ts     timestamptz NOT NULL,
    last_ts      timestamptz NOT NULL,
    PRIMARY KEY (entity_id, bucket)
) PARTITION BY RANGE (bucket);
CREATE INDEX features_1h_bucket_brin ON features_1h USING brin (bucket);

-- Forecasts: one row per (forecast, metric, horizon) ----------------------------------------

CREATE TABLE forecasts (
    event_id         text        NOT NULL,
    entity_id        text        NOT NULL,
    ts               timestamptz NOT NULL,
    service          text,
    cluster          text,
    metric           text        NOT NULL,
    horizon_min      int4        NOT NULL CHECK (horizon_min > 0),
    p50              float8,
    p90              float8,
    scale_event_prob float8 CHECK (scale_event_prob BETWEEN 0 AND 1),
    model            text        NOT NULL,
    src_partition    int4        NOT NULL,
    src_offset       int8        NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX forecasts_ts_brin ON forecasts USING brin (ts);
CREATE INDEX forecasts_entity_ts ON forecasts (entity_id, ts);

-- Recommendations --------------------------------------------------------------------------

CREATE TABLE recommendations (
    recommendation_id    text        NOT NULL,
    entity_id            text        NOT NULL,
    ts                   timestamptz NOT NULL,
    service              text,
    cluster              text,
    action               text        NOT NULL,
    target_replicas      int4,
    target_cpu_cores     float8,
    target_mem_bytes     float8,
    from_cluster         text,
    to_cluster           text,
    forecast_event_id    text,
    cost_change_per_hour float8      NOT NULL,
    shortfall_prob       float8      NOT NULL CHECK (shortfall_prob BETWEEN 0 AND 1),
    confidence           float8      NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    policy_version       text        NOT NULL,
    model_versions       jsonb       NOT NULL,
    reason               text        NOT NULL,
    src_partition        int4        NOT NULL,
    src_offset           int8        NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX recommendations_ts_brin ON recommendations USING brin (ts);
CREATE INDEX recommendations_entity_ts ON recommendations (entity_id, ts);

-- Drift alerts -----------------------------------------------------------------------------

CREATE TABLE drift_alerts (
    alert_id        text        NOT NULL,
    entity_id       text,
    ts              timestamptz NOT NULL,
    kind            text        NOT NULL,
    subject         text        NOT NULL,
    statistic       text        NOT NULL,
    value           float8,
    threshold       float8,
    severity        text        NOT NULL,
    model_version   text,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    state           text        NOT NULL,
    src_partition   int4        NOT NULL,
    src_offset      int8        NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX drift_alerts_ts_brin ON drift_alerts USING brin (ts);

-- Dead letters of every service ------------------------------------------------------------

CREATE TABLE dead_letters (
    failed_at        timestamptz NOT NULL,
    reason           text        NOT NULL,
    detail           text,
    service          text,
    source_topic     text,
    source_partition int4,
    source_offset    int8,
    key              bytea,
    payload          bytea,
    src_partition    int4        NOT NULL,
    src_offset       int8        NOT NULL
) PARTITION BY RANGE (failed_at);
CREATE INDEX dead_letters_failed_at_brin ON dead_letters USING brin (failed_at);

-- Model events and the registry (low volume: not partitioned) -------------------------------

CREATE TABLE model_events (
    event_id     text        NOT NULL,
    model_name   text        NOT NULL,
    version      text        NOT NULL,
    ts           timestamptz NOT NULL,
    kind         text        NOT NULL,
    artifact_uri text        NOT NULL,
    feature_set  text        NOT NULL,
    metrics      jsonb       NOT NULL,
    reason       text,
    src_partition int4       NOT NULL,
    src_offset    int8       NOT NULL,
    PRIMARY KEY (src_partition, src_offset)
);
CREATE INDEX model_events_model_ts ON model_events (model_name, ts);

-- The state of every model version as the model events tell it: registered, serving (the last
-- promoted or rolled-back-to version of its model), rejected or retired.
CREATE TABLE model_registry (
    model_name   text        NOT NULL,
    version      text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('registered', 'serving', 'rejected', 'retired')),
    artifact_uri text        NOT NULL,
    feature_set  text        NOT NULL,
    metrics      jsonb       NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (model_name, version)
);
CREATE UNIQUE INDEX model_registry_one_serving ON model_registry (model_name) WHERE status = 'serving';

-- The sink's consumed positions: the next offset to read, per group, topic and partition.
-- Written in the same transaction as the rows, so PostgreSQL holds exactly the records before
-- these offsets; the sink resumes from here, never from the broker's committed offsets.
CREATE TABLE sink_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      int4        NOT NULL,
    next_offset    int8        NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
