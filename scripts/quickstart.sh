#!/usr/bin/env bash
# Sets up and runs jobd on this machine (a fresh Debian with Python 3.11 will do):
#
#   bash scripts/quickstart.sh          set up, start a worker, run a sample job, leave it running
#   bash scripts/quickstart.sh --stop   stop the worker it started
#
# Steps: .venv with jobd installed; a MariaDB server at 127.0.0.1:3306 (installed and
# started if none answers); database `jobd` and user `jobd` (password: JOBD_DB_PASSWORD, or
# the one of an earlier run, or a random one, kept in .quickstart/db-password); the jobs
# table from schema.sql; .quickstart/jobd.yaml derived from config/jobd.yaml; a worker
# `jobd --config .quickstart/jobd.yaml` in the background (log .quickstart/jobd.log, pid
# .quickstart/jobd.pid); one job inserted with the seed's INSERT, a poll, and the finished row.
# Running it again restarts the worker and runs another sample job.
#
# Environment: JOBD_DB_PASSWORD (password of the database user jobd), JOBD_QUICKSTART_LISTEN
# (the worker's endpoint instead of the one in config/jobd.yaml).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$JOBD_ROOT"

STATE=.quickstart
PID_FILE=$STATE/jobd.pid
LOG_FILE=$STATE/jobd.log
CONFIG=$STATE/jobd.yaml
PASSWORD_FILE=$STATE/db-password
SAMPLE_TARGET=hello

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# worker_pid: the pid in the pid file if that process is still our jobd, else nothing.
worker_pid() {
  local pid
  [ -f "$PID_FILE" ] || return 0
  pid=$(cat "$PID_FILE")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "jobd.*$CONFIG"; then
    echo "$pid"
  fi
}

stop_worker() {
  local pid waited=0
  pid=$(worker_pid)
  if [ -z "$pid" ]; then
    note "no quickstart worker is running"
    rm -f "$PID_FILE"
    return 0
  fi
  step "stopping the quickstart worker (pid $pid)"
  kill -TERM "$pid"
  # SIGTERM lets running jobs finish; give them 30 s, then kill.
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge 300 ]; then
      note "still running after 30 s: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f "$PID_FILE"
  note "stopped"
}

case "${1:-}" in
  "") ;;
  --stop)
    stop_worker
    exit 0
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac

ensure_venv "."
ensure_mariadb "$LOCAL_SERVER_URL"

mkdir -p "$STATE"
chmod 700 "$STATE"

if [ -n "${JOBD_DB_PASSWORD:-}" ]; then
  note "database password: from JOBD_DB_PASSWORD"
elif [ -s "$PASSWORD_FILE" ]; then
  JOBD_DB_PASSWORD=$(cat "$PASSWORD_FILE")
  note "database password: from $PASSWORD_FILE (an earlier run)"
else
  JOBD_DB_PASSWORD=$("$VENV_PY" -c 'import secrets; print(secrets.token_urlsafe(18))')
  note "database password: generated"
fi
export JOBD_DB_PASSWORD
(umask 077 && printf '%s\n' "$JOBD_DB_PASSWORD" >"$PASSWORD_FILE")
chmod 600 "$PASSWORD_FILE"

step "creating database jobd and user jobd@127.0.0.1, jobd@localhost (password in $PASSWORD_FILE)"
if [ "$DB_STATE" = ok ]; then
  "$VENV_PY" "$HELPER" quickstart-sql | "$VENV_PY" "$HELPER" exec "$LOCAL_SERVER_URL"
else
  note "root cannot log in over TCP: using the server's socket as root"
  "$VENV_PY" "$HELPER" quickstart-sql | root_sql
fi
WORKER_URL=$("$VENV_PY" "$HELPER" worker-url)

step "creating table jobs from schema.sql (if it does not exist)"
"$VENV_PY" "$HELPER" exec "$WORKER_URL" <schema.sql

step "writing $CONFIG from config/jobd.yaml"
"$VENV_PY" "$HELPER" derive-config config/jobd.yaml "$CONFIG" "${JOBD_QUICKSTART_LISTEN:-}"
LISTEN=$("$VENV_PY" "$HELPER" listen "$CONFIG")
if ! JOBD_DATABASE_URL=$WORKER_URL "$VENV/bin/jobd" --check --config "$CONFIG"; then
  die "jobd --check failed (above); a jobs table made by an older schema.sql lacks the new" \
    "columns: add them, or drop the table (its rows go with it) and run this again"
fi

if [ -n "$(worker_pid)" ]; then
  stop_worker
fi
step "starting jobd --config $CONFIG (log $LOG_FILE)"
# JOBD_DATABASE_URL gives the worker its database; jobd removes it from the jobs' environment.
JOBD_DATABASE_URL=$WORKER_URL nohup "$VENV/bin/jobd" --config "$CONFIG" \
  </dev/null >>"$LOG_FILE" 2>&1 &
echo $! >"$PID_FILE"
PID=$(cat "$PID_FILE")

step "waiting for the worker to answer ping at $LISTEN"
waited=0
until "$VENV_PY" -c '
import sys
from jobd.client import NoAnswer, call
try:
    print("    " + repr(call(sys.argv[1], "ping", timeout=1.0)))
except NoAnswer:
    sys.exit(1)
' "$LISTEN"; do
  if ! kill -0 "$PID" 2>/dev/null; then
    tail -n 20 "$LOG_FILE" >&2
    die "jobd exited (log above, from $LOG_FILE)"
  fi
  [ "$waited" -lt 30 ] || die "jobd did not answer within 30 s (see $LOG_FILE)"
  waited=$((waited + 1))
done

step "running a sample job: INSERT INTO jobs (target, time_created) VALUES ('$SAMPLE_TARGET', UNIX_TIMESTAMP())"
"$VENV_PY" "$HELPER" sample-job "$WORKER_URL" "$LISTEN" "$SAMPLE_TARGET"

step "the worker's log ($LOG_FILE, last lines)"
tail -n 4 "$LOG_FILE" | sed 's/^/    /'

step "jobd is running (pid $PID) and serves $LISTEN"
cat <<EOF
    stop it:        kill \$(cat $PID_FILE)     (or: bash scripts/quickstart.sh --stop)
    its status:     .venv/bin/python -c 'from jobd.client import call; print(call("$LISTEN", "status"))'
    add a job:      mariadb -h127.0.0.1 -ujobd -p"\$(cat $PASSWORD_FILE)" jobd \\
                      -e "INSERT INTO jobs (target, time_created) VALUES ('$SAMPLE_TARGET', UNIX_TIMESTAMP())"
                    (the worker claims it at its next safety poll, or at once after a poll)
EOF
