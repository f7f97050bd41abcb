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
