-- The model registry: every model version written (by headroom-train or the retrainer), what it
-- is (feature schema, grid, horizons, training window, metrics, reference distributions and the
-- whole manifest), where its artifacts are, and its status. At most one version per family is
-- serving (the partial unique index); promotion retires the previous one in the same
-- transaction. Low volume: not partitioned.
CREATE TABLE model_versions (
    version          text        PRIMARY KEY,
    family           text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('candidate', 'serving', 'retired', 'rejected')),
    feature_schema   text        NOT NULL,
    interval_ms      int8        NOT NULL CHECK (interval_ms > 0),
    horizons_slots   int4[]      NOT NULL,
    neural           text[]      NOT NULL DEFAULT '{}',
    training_from    timestamptz,
    training_to      timestamptz,
    training_rows    int8,
    entities         int4,
    artifact_uri     text        NOT NULL,
    metrics          jsonb,
    reference        jsonb,
    manifest         jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    promoted_at      timestamptz,
    retired_at       timestamptz
);
CREATE UNIQUE INDEX model_versions_one_serving ON model_versions (family) WHERE status = 'serving';
CREATE INDEX model_versions_family_created ON model_versions (family, created_at);

-- Every status change, in order: the registry's history (what served when, who rolled back).
CREATE TABLE model_version_events (
    id        bigserial   PRIMARY KEY,
    version   text        NOT NULL REFERENCES model_versions (version),
    family    text        NOT NULL,
    status    text        NOT NULL,
    reason    text,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_version_events_family_at ON model_version_events (family, at);
