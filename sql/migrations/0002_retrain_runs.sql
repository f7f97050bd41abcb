-- Every retrain run the retrainer made (or the manual `headroom-retrain run`): what triggered
-- it, on which data, with which parameters, the candidate's and the serving version's scores
-- on the same holdout, and the outcome. Low volume: not partitioned.
CREATE TABLE retrain_runs (
    run_id            text        PRIMARY KEY,
    model_name        text        NOT NULL,
    trigger           text        NOT NULL CHECK (trigger IN ('drift', 'schedule', 'manual')),
    reason            text        NOT NULL,
    alert_ids         jsonb       NOT NULL DEFAULT '[]',
    status            text        NOT NULL CHECK (status IN ('running', 'promoted', 'rejected', 'failed', 'interrupted')),
    serving_version   text,
    candidate_version text,
    params            jsonb       NOT NULL,
    metrics           jsonb,
    improvement       float8,
    data_source       text,
    data_from         timestamptz,
    data_to           timestamptz,
    train_rows        int8,
    holdout_rows      int8,
    entities          int4,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    duration_s        float8,
    detail            text
);
CREATE INDEX retrain_runs_model_started ON retrain_runs (model_name, started_at);
