#!/usr/bin/env bash
# The main job: installs and starts what is missing (system packages, the broker,
# PostgreSQL), creates the topics from topologies/, starts the featurizer, the scorer (after
# training and promoting a first model version when models/ has none), the recommender, the drift
# monitor, the retrainer, and the sink into PostgreSQL (which applies the migrations), and feeds them
# generated telemetry (or a real trace with --trace PATH) until Ctrl-C.
#
#   scripts/run.sh                         synthetic fleet, 20 services x 5 clusters, 500 rec/s
#   scripts/run.sh --rate 2000 --entities 10000
#   scripts/run.sh --trace ../shared/data/bitbrains-rnd-2013-7.tar.gz --max-vms 50
#   --duration 15m stops the generator after 15 minutes (default 1h; a replay runs to the
#   trace's end unless --duration is given); the services keep running until Ctrl-C.
CALLER_DIR="$PWD"
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

RATE=500
DURATION=1h
DURATION_GIVEN=""
TRACE=""
MAX_VMS=""
ENTITIES=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rate|--duration|--entities|--trace|--max-vms) [ $# -ge 2 ] || die "$1 needs a value (see --help)" ;;
    esac
    case "$1" in
        --rate) RATE=$2; shift 2 ;;
        --duration) DURATION=$2; DURATION_GIVEN=1; shift 2 ;;
        --entities) ENTITIES=$2; shift 2 ;;
        --trace) TRACE=$2; shift 2 ;;
        --max-vms) MAX_VMS=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
# Checked before the set-up, which can take minutes on a new machine.
if [ -n "$TRACE" ]; then
    # Relative to where the script was called from, not to the repository.
    case "$TRACE" in /*) ;; *) TRACE="$CALLER_DIR/$TRACE" ;; esac
    [ -e "$TRACE" ] || die "--trace: no such file or directory: $TRACE"
fi
[[ "$RATE" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--rate must be a number of records per second, not '$RATE'"
[[ "$DURATION" =~ ^([0-9]+(s|sec|secs|m|min|mins|h|hr|hrs|hours|d|days))+$ ]] \
    || die "--duration must look like 30s, 15m, 1h or 1h30m, not '$DURATION'"
for v in "--max-vms:$MAX_VMS" "--entities:$ENTITIES"; do
    [[ "${v#*:}" =~ ^[0-9]*$ ]] || die "${v%%:*} must be a whole number, not '${v#*:}'"
done

# The local broker keeps every record of every topic in memory (tansu's memory engine deletes
# nothing): measured 5.6-6.3 KB of broker memory per telemetry record once the whole pipeline has
# written its features, forecasts, recommendations and drift state (2026-12-08: 7.5 GB after
# 1,344,009 records). A run (generated, or a replay with --duration) that would not fit is
# refused before anything starts.
duration_secs() {
    local rest=$1 total=0 n unit
    while [[ "$rest" =~ ^([0-9]+)([a-z]+)(.*)$ ]]; do
        n=${BASH_REMATCH[1]}; unit=${BASH_REMATCH[2]}; rest=${BASH_REMATCH[3]}
        case "$unit" in
            s|sec|secs) total=$((total + n)) ;;
            m|min|mins) total=$((total + n * 60)) ;;
            h|hr|hrs|hours) total=$((total + n * 3600)) ;;
            d|days) total=$((total + n * 86400)) ;;
        esac
    done
    echo "$total"
}
if [ -n "$TRACE" ] && [ -z "$DURATION_GIVEN" ] && [ -z "$MAX_VMS" ] && [ "${HEADROOM_BROKER_STORAGE:-memory}" = memory ]; then
    # A replay's length is the trace's: the whole Bitbrains month (500 VMs, about 3.8 million
    # samples) would need over 20 GB.
    log "note: the replay runs to the trace's end and the in-memory broker holds about 6 KB per sample; --max-vms or --duration bound it"
elif [ "${HEADROOM_BROKER_STORAGE:-memory}" = memory ] && [ -r /proc/meminfo ]; then
    records=$(awk -v r="$RATE" -v s="$(duration_secs "$DURATION")" 'BEGIN { printf "%.0f", r * s }')
    need_mb=$((records * 6 / 1000))
    avail_mb=$(awk '/^MemAvailable:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
    if [ "$need_mb" -gt $((avail_mb * 9 / 10)) ]; then
        die "--rate $RATE for --duration $DURATION publishes up to $records records; the in-memory broker would need about $((need_mb / 1024)) GB for them and their outputs, and this machine has $((avail_mb / 1024)) GB available. Lower --rate or --duration (the services keep running after the generator ends), or restart the broker empty first (scripts/stack.sh broker-down)."
    elif [ "$need_mb" -gt $((avail_mb / 2)) ]; then
        log "note: this run will hold about $((need_mb / 1024)) GB in the in-memory broker ($((avail_mb / 1024)) GB available)"
    fi
fi

"$REPO_ROOT/scripts/setup.sh"
"$REPO_ROOT/scripts/stack.sh" up
log "building release binaries"
cargo build --release --quiet -p headroom-featurizer -p headroom-cli -p headroom-loadgen \
    -p headroom-scorer -p headroom-trainer -p headroom-sink -p headroom-recommender \
    -p headroom-drift-monitor -p headroom-retrainer
BIN="$CARGO_TARGET_DIR/release"
export HEADROOM_BROKERS="$KAFKA_BROKERS"
"$BIN/headroom" topology apply --brokers "$KAFKA_BROKERS"

MODELS="${HEADROOM_MODELS_DIR:-$REPO_ROOT/models}"
ARCHIVE="${HEADROOM_ARCHIVE_ROOT:-$HEADROOM_CACHE/archive}"
if ! grep -q '"xgboost"' "$MODELS/registry.json" 2>/dev/null; then
    log "no serving model in $MODELS: training a first version (XGBoost, LSTM, GRU) on generated telemetry (about two minutes)"
    "$BIN/headroom-train" train --generate-entities 50 --generate-days 7 --rounds 60 \
        --models xgboost,lstm,gru --nn-hidden 32 --nn-epochs 2 --nn-samples-per-epoch 10000 \
        --models-dir "$MODELS" --out "$MODELS/reports/first" 2>&1 | tail -n 3 >&2
    version="$(ls -1 "$MODELS" | grep '^v' | sort | tail -n 1)"
    "$BIN/headroom-train" promote "$version" --models-dir "$MODELS"
fi
# The PostgreSQL model registry names the serving version to the scorer: bring it in line with
# registry.json (registers the version if the database has never seen it; a no-op otherwise).
serving="$(sed -n 's/.*"xgboost": *"\(v[^"]*\)".*/\1/p' "$MODELS/registry.json" | head -n 1)"
"$BIN/headroom-train" promote "$serving" --models-dir "$MODELS" --registry-url "$PG_URL" >/dev/null

mkdir -p "$STACK_DIR"
pids=()
cleanup() {
    trap - INT TERM EXIT
    log "stopping"
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    log "stopped (the broker keeps running; scripts/stack.sh down stops it)"
}
# Ctrl-C (or a TERM) stops everything and ends the script there: without the exit, the script
# would go on after the interrupted `wait` and report the generator, stopped by the same
# signal, as failed.
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

# Each service joins its group under a static member name (kafka.instance_id): if a run ended
# without its services leaving their groups (SIGKILL, out of memory, a closed terminal), tansu
# never expires the dead members, and services restarted without a name would wait in their
# groups for partitions the dead ones hold. Under the same names they take them back as they join.
# (A name set in the environment is kept.)
for svc in FEATURIZER:featurizer SCORER:scorer RECOMMENDER:recommender SINK:sink \
    DRIFT:drift-monitor RETRAIN:retrainer; do
    var="HEADROOM_${svc%%:*}__KAFKA__INSTANCE_ID"
    export "$var=${!var:-${svc#*:}-local}"
done

HEADROOM_FEATURIZER__KAFKA__BROKERS="$KAFKA_BROKERS" HEADROOM_FEATURIZER__HTTP__LISTEN="127.0.0.1:9464" \
    "$BIN/headroom-featurizer" >"$STACK_DIR/featurizer.log" 2>&1 &
pids+=($!)
HEADROOM_SCORER__KAFKA__BROKERS="$KAFKA_BROKERS" HEADROOM_SCORER__HTTP__LISTEN="127.0.0.1:9465" \
    HEADROOM_SCORER__MODELS__DIR="$MODELS" HEADROOM_SCORER__MODELS__REGISTRY_URL="$PG_URL" \
    "$BIN/headroom-scorer" >"$STACK_DIR/scorer.log" 2>&1 &
pids+=($!)
HEADROOM_RECOMMENDER__KAFKA__BROKERS="$KAFKA_BROKERS" HEADROOM_RECOMMENDER__HTTP__LISTEN="127.0.0.1:9467" \
    "$BIN/headroom-recommender" >"$STACK_DIR/recommender.log" 2>&1 &
pids+=($!)
HEADROOM_SINK__KAFKA__BROKERS="$KAFKA_BROKERS" HEADROOM_SINK__HTTP__LISTEN="127.0.0.1:9466" \
    HEADROOM_SINK__POSTGRES__URL="$PG_URL" HEADROOM_SINK__ARCHIVE__ROOT="$ARCHIVE" \
    "$BIN/headroom-sink" >"$STACK_DIR/sink.log" 2>&1 &
pids+=($!)
HEADROOM_DRIFT__KAFKA__BROKERS="$KAFKA_BROKERS" HEADROOM_DRIFT__HTTP__LISTEN="127.0.0.1:9468" \
    HEADROOM_DRIFT__MODELS__DIR="$MODELS" \
    "$BIN/headroom-drift-monitor" >"$STACK_DIR/drift-monitor.log" 2>&1 &
pids+=($!)
HEADROOM_RETRAIN__KAFKA__BROKERS="$KAFKA_BROKERS" HEADROOM_RETRAIN__HTTP__LISTEN="127.0.0.1:9469" \
    HEADROOM_RETRAIN__MODELS__DIR="$MODELS" HEADROOM_RETRAIN__POSTGRES__URL="$PG_URL" \
    HEADROOM_RETRAIN__DATA__ARCHIVE_ROOT="$ARCHIVE" \
    "$BIN/headroom-retrain" serve >"$STACK_DIR/retrainer.log" 2>&1 &
pids+=($!)

if [ -n "$TRACE" ]; then
    args=(replay --topic telemetry.raw --trace "$TRACE" --rate "$RATE")
    [ -n "$MAX_VMS" ] && args+=(--max-vms "$MAX_VMS")
    [ -n "$DURATION_GIVEN" ] && args+=(--duration "$DURATION")
else
    args=(generate --topic telemetry.raw --rate "$RATE" --duration "$DURATION")
    [ -n "$ENTITIES" ] && args+=(--entities "$ENTITIES")
fi
"$BIN/loadgen" "${args[@]}" &
loadgen=$!
pids+=($loadgen)

cat >&2 <<TXT

  headroom is running
    broker           $KAFKA_BROKERS   (topics: telemetry.raw -> features -> forecasts -> recommendations, bad input -> telemetry.dlq)
    featurizer       http://127.0.0.1:9464/metrics   http://127.0.0.1:9464/health/ready
    scorer           http://127.0.0.1:9465/metrics   (models: $MODELS)
    recommender      http://127.0.0.1:9467/metrics   (recommend-only; policy: crates/policy/default.toml)
    sink             http://127.0.0.1:9466/metrics   (every topic -> PostgreSQL, exactly once)
    drift monitor    http://127.0.0.1:9468/metrics   (features + forecasts -> drift.alerts)
    retrainer        http://127.0.0.1:9469/metrics   (drift.alerts -> retrain, validate, promote -> models)
                     $BIN/headroom-retrain run | runs | rollback   (manual run, run history, rollback)
    logs             $STACK_DIR/{featurizer,scorer,recommender,sink,drift-monitor,retrainer}.log
    PostgreSQL       psql $PG_URL   (telemetry_raw, telemetry_1m, telemetry_1h, forecasts, dead_letters, ...)
    Parquet archive  $ARCHIVE   (closed hours; $BIN/headroom archive query --root $ARCHIVE --preset cpu-p95-7d)
    read features    $BIN/loadgen tail --topic features   (or any Kafka client; README.md)
    read forecasts   $BIN/loadgen tail --topic forecasts
    recommendations  $BIN/loadgen tail --topic recommendations
    drift alerts     $BIN/loadgen tail --topic drift.alerts
  Ctrl-C stops the services and the generator.

TXT
status=0
wait "$loadgen" || status=$?
if [ "$status" -ne 0 ]; then
    # cleanup (the EXIT trap) stops the services: running them with no input helps no one.
    die "the generator failed (exit $status; its error is above); stopping the services"
fi
log "generator finished; the services keep running until Ctrl-C"
wait "${pids[0]}" || true
