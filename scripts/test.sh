#!/usr/bin/env bash
# The whole test suite, unit and integration, against the real broker and PostgreSQL.
# Installs and starts what is missing (scripts/setup.sh, scripts/stack.sh), then runs every
# test of the workspace. Integration tests use random topic and group names, so they do not
# depend on what is already on the broker.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/setup.sh"
# A memory-backed broker left bloated by benchmarks is restarted empty (tests make their own
# topics): one holding 1.1 GB made the sink's fault tests 6-10 x slower and one of them fail,
# and one holding 845 MB after a day of suites and benchmarks timed two of them out.
HEADROOM_BROKER_RECYCLE_MB="${HEADROOM_BROKER_RECYCLE_MB:-512}" "$REPO_ROOT/scripts/stack.sh" up
export HEADROOM_TEST_BROKERS="$KAFKA_BROKERS"
export HEADROOM_TEST_PG_URL="$PG_URL"
export HEADROOM_PYTHON="$HEADROOM_CACHE/venv/bin/python"
export HEADROOM_OPS_VENV="$HEADROOM_CACHE/ops-venv"
export HEADROOM_MLFLOW="$HEADROOM_CACHE/mlflow-venv/bin/mlflow"

log "building and running the tests (target dir: $CARGO_TARGET_DIR)"
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi

# The neural models' CUDA backend must keep compiling, although no GPU is here to run it
# (its tests are the CPU ones above; `device = cuda` is refused at run time without a GPU).
log "checking that headroom-neural builds with its cuda feature"
cargo check -p headroom-neural --features cuda
