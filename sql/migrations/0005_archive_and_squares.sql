-- The hours of raw telemetry the sink has cut into the Parquet archive (one file per UTC hour,
-- <archive.root>/telemetry/date=YYYY-MM-DD/hour=HH/telemetry.parquet). A row is written after
-- the file is in place; an hour that receives late rows is cut again and its row updated. A
-- restarted sink resumes after the newest hour recorded here. Low volume: not partitioned.
CREATE TABLE archive_hours (
    hour        timestamptz PRIMARY KEY,
    rows        int8        NOT NULL CHECK (rows >= 0),
    path        text        NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);

-- Sums of squares of CPU and memory utilization in the rollups, so that a standard deviation
-- over any set of rollup rows is sqrt(sum(sq)/sum(n) - mean^2) (the anomaly query's baseline).
-- NULL in a row with samples: written before this migration; queries skip such rows.
ALTER TABLE telemetry_1m ADD COLUMN cpu_sq float8, ADD COLUMN mem_sq float8;
ALTER TABLE telemetry_1h ADD COLUMN cpu_sq float8, ADD COLUMN mem_sq float8;
ALTER TABLE telemetry_service_1h ADD COLUMN cpu_sq float8, ADD COLUMN mem_sq float8;
