#!/usr/bin/env bash
# README command 1: set everything up, make sure a broker runs, and start rkllmd in the
# foreground on its embedded default (SmolLM2-135M through llama.cpp). Ctrl-C, SIGTERM (kill,
# timeout) or SIGHUP (the terminal closed) stops rkllmd and then the broker it started.
#   RKLLMD_MQTT__HOST / RKLLMD_MQTT__PORT  broker to use (default 127.0.0.1:1883);
#   a local mosquitto is started on that port when nothing answers there.
#   RKLLMD_CONFIG  a config file (default: none, the embedded default).
#   RKLLMD_VENV  the virtualenv to run (default: .venv in the repository).
#   RKLLMD_SKIP_SETUP=1  do not run scripts/setup.sh (the venv and the broker are there already).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "${RKLLMD_SKIP_SETUP:-}" = 1 ] || "$ROOT/scripts/setup.sh"
VENV="${RKLLMD_VENV:-$ROOT/.venv}"
HOST="${RKLLMD_MQTT__HOST:-127.0.0.1}"
PORT="${RKLLMD_MQTT__PORT:-1883}"
export RKLLMD_MQTT__HOST="$HOST" RKLLMD_MQTT__PORT="$PORT"

broker_pid=""
daemon_pid=""
# stop_pid PID SECONDS: SIGTERM, up to SECONDS for it to end, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1 left=$(( $2 * 10 ))
    kill -TERM "$pid" 2>/dev/null || true
    while [ "$left" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
        sleep 0.1
        left=$(( left - 1 ))
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# Whatever ends the script (a signal, an error, rkllmd exiting) stops rkllmd first, so it can
# still say "stopped" on the broker, then the broker. A signal that interrupts `wait` below runs
# its trap at once; further signals are ignored from then on, so that a second SIGTERM (timeout
# signals the script and then its whole group) cannot cut the cleanup short.
cleanup() {
    local code=$1
    trap '' INT TERM HUP
    trap - EXIT
    if [ -n "$daemon_pid" ]; then stop_pid "$daemon_pid" 30; fi  # > limits.shutdown_grace_s
    if [ -n "$broker_pid" ]; then stop_pid "$broker_pid" 5; fi
    exit "$code"
}
trap 'cleanup $?' EXIT
trap 'cleanup 130' INT
trap 'cleanup 143' TERM
trap 'cleanup 129' HUP

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
    # In a session of its own: Ctrl-C (SIGINT to the terminal's foreground group) and `timeout`
    # (SIGTERM to its group) would stop mosquitto at once, before rkllmd could publish "stopped"
    # (subscribers saw the Will "offline"); cleanup below stops it after rkllmd.
    setsid "$MOSQ" -c "$conf" &
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
status=0
wait "$daemon_pid" || status=$?
daemon_pid=""
exit "$status"
