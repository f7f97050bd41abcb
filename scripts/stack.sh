#!/usr/bin/env bash
# The local stack: the tansu Kafka-protocol broker and PostgreSQL on loopback.
#   stack.sh up            start both (idempotent), print the addresses
#   stack.sh broker-up     start only the broker
#   stack.sh pg-up         start only PostgreSQL, create the role and database
#   stack.sh down          stop the broker (PostgreSQL is a system service and keeps running)
#   stack.sh status
#   stack.sh pg-scratch start|stop|restart DIR PORT
#                          a throw-away PostgreSQL server of its own (initdb in DIR, loopback PORT,
#                          trust auth, user postgres): fault tests restart it without disturbing
#                          the shared one
# HEADROOM_BROKER_STORAGE=sqlite keeps the broker's data across restarts (default: memory);
#                          it is far slower under load (docs/benchmarks.md, Through the broker).
# HEADROOM_BROKER_RECYCLE_MB=N restarts a running memory-backed broker whose resident memory is
#                          above N MiB (its data are throw-away; a broker bloated by benchmarks
#                          slows every client 2-10 x). scripts/test.sh sets it.
source "$(dirname "$0")/lib.sh"

broker_pidfile="$STACK_DIR/tansu.pid"

broker_up() {
    [ -x "$TANSU_BIN" ] || "$REPO_ROOT/scripts/setup.sh"
    mkdir -p "$STACK_DIR"
    if [ -f "$broker_pidfile" ] && kill -0 "$(cat "$broker_pidfile")" 2>/dev/null && wait_port "$KAFKA_HOST" "$KAFKA_PORT" 1; then
        local rss_mb; rss_mb=$(( $(ps -o rss= -p "$(cat "$broker_pidfile")" 2>/dev/null || echo 0) / 1024 ))
        if [ -n "${HEADROOM_BROKER_RECYCLE_MB:-}" ] && [ "${HEADROOM_BROKER_STORAGE:-memory}" = memory ] \
            && [ "$rss_mb" -gt "$HEADROOM_BROKER_RECYCLE_MB" ]; then
            log "broker holds ${rss_mb} MiB (> HEADROOM_BROKER_RECYCLE_MB=$HEADROOM_BROKER_RECYCLE_MB): restarting it empty"
            broker_down
        else
            log "broker already running at $KAFKA_BROKERS (${rss_mb} MiB resident)"
            return 0
        fi
    fi
    if wait_port "$KAFKA_HOST" "$KAFKA_PORT" 0; then
        die "port $KAFKA_PORT is taken by another process; set HEADROOM_KAFKA_PORT"
    fi
    local storage="memory://tansu/"
    if [ "${HEADROOM_BROKER_STORAGE:-memory}" = sqlite ]; then
        # tansu reads the path after sqlite:// as relative to its working directory.
        storage="sqlite://tansu.db"
    fi
    log "starting tansu on $KAFKA_BROKERS ($storage)"
    (cd "$STACK_DIR" && exec setsid "$TANSU_BIN" broker \
        --listener-url "tcp://$KAFKA_BROKERS" \
        --advertised-listener-url "tcp://$KAFKA_BROKERS" \
        --storage-engine "$storage" \
        >"$STACK_DIR/tansu.log" 2>&1 </dev/null) &
    echo $! >"$broker_pidfile"
    wait_port "$KAFKA_HOST" "$KAFKA_PORT" 30 || { tail -20 "$STACK_DIR/tansu.log" >&2; die "broker did not start"; }
    log "broker up at $KAFKA_BROKERS (log: $STACK_DIR/tansu.log)"
}

broker_down() {
    if [ -f "$broker_pidfile" ]; then
        local pid; pid=$(cat "$broker_pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$broker_pidfile"
        log "broker stopped"
    fi
}

pg_up() {
    command -v pg_ctlcluster >/dev/null || "$REPO_ROOT/scripts/setup.sh"
    if ! pg_lsclusters -h 2>/dev/null | grep -q "^$PG_VERSION main"; then
        log "creating PostgreSQL cluster $PG_VERSION/main"
        as_root pg_createcluster "$PG_VERSION" main -p "$PG_PORT" >/dev/null
    fi
    local hba; hba=$(pg_conftool -s "$PG_VERSION" main show hba_file 2>/dev/null || echo "/etc/postgresql/$PG_VERSION/main/pg_hba.conf")
    # Loopback access for the project's role only, without a password: local development.
    # Production points services at its own PostgreSQL URL with credentials from a secret.
    local rule="host    $PG_DB    $PG_USER    127.0.0.1/32    trust"
    if ! as_root grep -qF "$rule" "$hba"; then
        as_root sed -i "1i $rule" "$hba"
        pg_lsclusters -h | grep -q "^$PG_VERSION main .* online" && as_root pg_ctlcluster "$PG_VERSION" main reload
    fi
    if ! pg_lsclusters -h | grep -q "^$PG_VERSION main .* online"; then
        log "starting PostgreSQL $PG_VERSION"
        as_root pg_ctlcluster "$PG_VERSION" main start
    fi
    local port; port=$(pg_lsclusters -h | awk -v v="$PG_VERSION" '$1==v && $2=="main" {print $3}')
    [ "$port" = "$PG_PORT" ] || die "PostgreSQL $PG_VERSION/main listens on $port, not $PG_PORT; set HEADROOM_PG_PORT=$port"
    local psql=(as_root runuser -u postgres -- psql -p "$PG_PORT" -qtAX)
    if [ "$(id -u)" != 0 ]; then psql=(sudo -u postgres psql -p "$PG_PORT" -qtAX); fi
    [ "$("${psql[@]}" -c "select 1 from pg_roles where rolname='$PG_USER'")" = 1 ] || "${psql[@]}" -c "create role $PG_USER login" >/dev/null
    [ "$("${psql[@]}" -c "select 1 from pg_database where datname='$PG_DB'")" = 1 ] || "${psql[@]}" -c "create database $PG_DB owner $PG_USER" >/dev/null
    wait_port 127.0.0.1 "$PG_PORT" 20 || die "PostgreSQL does not answer on 127.0.0.1:$PG_PORT"
    log "PostgreSQL up: $PG_URL"
}

# A throw-away cluster for fault tests. The server refuses to run as root: it runs as the
# `postgres` system user that the Debian package creates.
pg_scratch() {
    local action="$1" dir="$2" port="$3"
    command -v pg_ctlcluster >/dev/null || "$REPO_ROOT/scripts/setup.sh"
    local bin="/usr/lib/postgresql/$PG_VERSION/bin"
    local run=()
    if [ "$(id -u)" = 0 ]; then run=(runuser -u postgres --); fi
    case "$action" in
        start)
            if [ ! -f "$dir/PG_VERSION" ]; then
                mkdir -p "$dir"
                [ "$(id -u)" = 0 ] && chown postgres: "$dir"
                "${run[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
            fi
            "${run[@]}" "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 30 \
                -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
            ;;
        stop) "${run[@]}" "$bin/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1 || true ;;
        restart)
            "${run[@]}" "$bin/pg_ctl" -D "$dir" -m fast -w -t 30 \
                -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" restart >/dev/null
            ;;
        *) die "usage: $0 pg-scratch start|stop|restart DIR PORT" ;;
    esac
}

case "${1:-up}" in
    up) broker_up; pg_up ;;
    broker-up) broker_up ;;
    broker-down) broker_down ;;
    pg-up) pg_up ;;
    pg-scratch) pg_scratch "${2:-}" "${3:?DIR}" "${4:-0}" ;;
    down) broker_down ;;
    status)
        if wait_port "$KAFKA_HOST" "$KAFKA_PORT" 0; then echo "broker: up at $KAFKA_BROKERS"; else echo "broker: down"; fi
        pg_lsclusters 2>/dev/null || echo "postgresql: not installed" ;;
    # For a shell that builds and tests by hand: eval "$(scripts/stack.sh env)"
    env)
        echo "export HEADROOM_BROKERS=$KAFKA_BROKERS"
        echo "export HEADROOM_PG_URL=$PG_URL"
        echo "export CARGO_TARGET_DIR=$CARGO_TARGET_DIR XGBOOST_LIB_DIR=$XGBOOST_LIB_DIR"
        ;;
    *) die "usage: $0 up|down|broker-up|broker-down|pg-up|pg-scratch|status|env" ;;
esac
