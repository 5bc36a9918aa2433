#!/usr/bin/env bash
# README command 1: set everything up, make sure a broker runs, and start rkllmd in the
# foreground on its embedded default (SmolLM2-135M through llama.cpp). Ctrl-C stops both.
#   RKLLMD_MQTT__HOST / RKLLMD_MQTT__PORT  broker to use (default 127.0.0.1:1883);
#   a local mosquitto is started on that port when nothing answers there.
#   RKLLMD_CONFIG  a config file (default: none, the embedded default).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
VENV="${RKLLMD_VENV:-$ROOT/.venv}"
HOST="${RKLLMD_MQTT__HOST:-127.0.0.1}"
PORT="${RKLLMD_MQTT__PORT:-1883}"
export RKLLMD_MQTT__HOST="$HOST" RKLLMD_MQTT__PORT="$PORT"

broker_pid=""
daemon_pid=""
cleanup() {
    trap - INT TERM EXIT
    [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [ -n "$broker_pid" ] && kill -TERM "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
    exit 0
}
trap cleanup INT TERM EXIT

if ! "$VENV/bin/python" - "$HOST" "$PORT" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
then
    MOSQ="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    conf="$(mktemp -t rkllmd-mosquitto.XXXXXX.conf)"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n' "$PORT" > "$conf"
    echo "[quickstart] no broker on $HOST:$PORT; starting mosquitto on 127.0.0.1:$PORT" >&2
    "$MOSQ" -c "$conf" &
    broker_pid=$!
    HOST=127.0.0.1; export RKLLMD_MQTT__HOST=127.0.0.1
fi

cat >&2 <<TRY

  rkllmd is starting on the broker $HOST:$PORT. In another terminal, try:

    mosquitto_rr -h $HOST -p $PORT -t rkllmd/request/generate -e demo/reply -m 'What is the capital of France?' -W 60
    mosquitto_sub -h $HOST -p $PORT -t 'rkllmd/stream/+/text' -N      # tokens as running text
    mosquitto_pub -h $HOST -p $PORT -t rkllmd/request/generate -m 'Tell me a joke about robots'
    mosquitto_sub -h $HOST -p $PORT -t rkllmd/response/generate -C 1  # the final answer, JSON
    $VENV/bin/rkllmd ask 'Why is the sky blue?' --port $PORT

  Ctrl-C stops rkllmd$( [ -n "$broker_pid" ] && echo " and the broker" ).

TRY
"$VENV/bin/rkllmd" run ${RKLLMD_CONFIG:+--config "$RKLLMD_CONFIG"} &
daemon_pid=$!
wait "$daemon_pid" || true
daemon_pid=""
