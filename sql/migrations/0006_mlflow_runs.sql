-- The MLflow run a retrain run was logged to (retrainer `mlflow.tracking_url`), so that a run
-- interrupted by a stop is also ended in MLflow (KILLED) at the next start-up, and an operator
-- can go from `headroom-retrain runs` to the tracking server.
ALTER TABLE retrain_runs ADD COLUMN mlflow_run_id text;
