#!/usr/bin/env bash
# Sets up and runs jobd on this machine (a fresh Debian with Python 3.11 will do):
#
#   bash scripts/quickstart.sh          set up, start a master and a worker, run a sample job,
#                                       leave both running, print the dashboard's URL
#   bash scripts/quickstart.sh --stop   stop the daemons it started
#
# Steps: .venv with jobd installed; a MariaDB server at 127.0.0.1:3306 (installed and
# started if none answers); database `jobd` and user `jobd` (password: JOBD_DB_PASSWORD, or
# the one of an earlier run, or a random one, kept in .quickstart/db-password); the tables
# from schema.sql; .quickstart/jobd-master.yaml and .quickstart/jobd.yaml derived from
# config/; `jobd-master` (with its dashboard at 127.0.0.1) and `jobd` in the background
# (logs .quickstart/*.log, pids .quickstart/*.pid); one job inserted with the seed's
# INSERT, a poll, and the finished row.  Running it again restarts both and runs another
# sample job.
#
# Environment: JOBD_DB_PASSWORD (password of the database user jobd), JOBD_QUICKSTART_LISTEN
# (the worker's endpoint instead of the one in config/jobd.yaml), JOBD_QUICKSTART_MASTER
# (the master's, instead of config/jobd-master.yaml's), JOBD_QUICKSTART_HTTP (the
# dashboard's HOST:PORT, default 127.0.0.1:8081).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$JOBD_ROOT"

STATE=.quickstart
CONFIG=$STATE/jobd.yaml
MASTER_CONFIG=$STATE/jobd-master.yaml
PASSWORD_FILE=$STATE/db-password
HTTP=${JOBD_QUICKSTART_HTTP:-127.0.0.1:8081}
SAMPLE_TARGET=hello

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# daemon_pid NAME CONFIG: the pid in .quickstart/NAME.pid if that process is still ours.
daemon_pid() {
  local pid file=$STATE/$1.pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--config $2"; then
    echo "$pid"
  fi
}

# stop_daemon NAME CONFIG: SIGTERM (running jobs may finish for 30 s), then SIGKILL.
stop_daemon() {
  local pid waited=0
  pid=$(daemon_pid "$1" "$2")
  if [ -z "$pid" ]; then
    note "no quickstart $1 is running"
    rm -f "$STATE/$1.pid"
    return 0
  fi
  step "stopping the quickstart $1 (pid $pid)"
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge 300 ]; then
      note "still running after 30 s: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f "$STATE/$1.pid"
  note "stopped"
}

stop_all() {
  stop_daemon jobd "$CONFIG"
  stop_daemon jobd-master "$MASTER_CONFIG"
}

# start_daemon NAME CONFIG ADDRESS: start .venv/bin/NAME --config CONFIG in the background
# with the database URL in its environment, and wait until it answers ping at ADDRESS.
start_daemon() {
  local name=$1 config=$2 address=$3 pid waited=0
  step "starting $name --config $config (log $STATE/$name.log)"
  # JOBD_DATABASE_URL gives it its database; jobd removes it from the jobs' environment.
  JOBD_DATABASE_URL=$WORKER_URL nohup "$VENV/bin/$name" --config "$config" \
    </dev/null >>"$STATE/$name.log" 2>&1 &
  pid=$!
  echo "$pid" >"$STATE/$name.pid"
  step "waiting for $name to answer ping at $address"
  until "$VENV_PY" -c '
import sys
from jobd.client import NoAnswer, call
try:
    print("    " + repr(call(sys.argv[1], "ping", timeout=1.0)))
except NoAnswer:
    sys.exit(1)
' "$address"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$STATE/$name.log" >&2
      die "$name exited (log above, from $STATE/$name.log)"
    fi
    [ "$waited" -lt 30 ] || die "$name did not answer within 30 s (see $STATE/$name.log)"
    waited=$((waited + 1))
  done
}

case "${1:-}" in
  "") ;;
  --stop)
    stop_all
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

step "writing $MASTER_CONFIG from config/jobd-master.yaml (the dashboard at $HTTP)"
"$VENV_PY" "$HELPER" derive-master-config config/jobd-master.yaml "$MASTER_CONFIG" "$HTTP" \
  "${JOBD_QUICKSTART_MASTER:-}"
MASTER=$("$VENV_PY" "$HELPER" listen "$MASTER_CONFIG")
step "writing $CONFIG from config/jobd.yaml"
"$VENV_PY" "$HELPER" derive-config config/jobd.yaml "$CONFIG" "${JOBD_QUICKSTART_LISTEN:-}" \
  "$MASTER"
LISTEN=$("$VENV_PY" "$HELPER" listen "$CONFIG")
if ! JOBD_DATABASE_URL=$WORKER_URL "$VENV/bin/jobd" --check --config "$CONFIG" ||
  ! JOBD_DATABASE_URL=$WORKER_URL "$VENV/bin/jobd-master" --check --config "$MASTER_CONFIG"; then
  die "a --check failed (above); a table made by an older schema.sql lacks the new" \
    "columns: add them, or drop the table (its rows go with it) and run this again"
fi

stop_all
start_daemon jobd-master "$MASTER_CONFIG" "$MASTER"
start_daemon jobd "$CONFIG" "$LISTEN"

step "running a sample job: INSERT INTO jobs (target, time_created) VALUES ('$SAMPLE_TARGET', UNIX_TIMESTAMP())"
"$VENV_PY" "$HELPER" sample-job "$WORKER_URL" "$LISTEN" "$SAMPLE_TARGET"

step "the worker's log ($STATE/jobd.log, last lines)"
tail -n 4 "$STATE/jobd.log" | sed 's/^/    /'

step "jobd-master (pid $(cat "$STATE/jobd-master.pid")) serves $MASTER; jobd (pid $(cat "$STATE/jobd.pid")) serves $LISTEN"
cat <<EOF
    the dashboard:  http://$HTTP/        (metrics: http://$HTTP/metrics)
    stop them:      bash scripts/quickstart.sh --stop
    add a job:      .venv/bin/jobctl --database "mysql://jobd:\$(cat $PASSWORD_FILE)@127.0.0.1:3306/jobd" \\
                      add $SAMPLE_TARGET --wait
EOF
