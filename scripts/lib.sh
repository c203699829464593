# shellcheck shell=bash
# Shared by scripts/test.sh and scripts/quickstart.sh (sourced, not run): the venv and
# "make sure a MariaDB server answers", written once.
#
# Functions set these globals:
#   ensure_venv     -> VENV_PY (the venv's python)
#   ensure_mariadb  -> DB_STATE: "ok" (the URL's user can log in) or "denied" (the server
#                      answers but refuses that user, as a fresh Debian install refuses
#                      root over TCP)

JOBD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$JOBD_ROOT/.venv"
VENV_PY="$VENV/bin/python"
HELPER="$JOBD_ROOT/scripts/helper.py"
#: The server the scripts use when no URL is given: Debian's default MariaDB.
LOCAL_SERVER_URL="mysql://root@127.0.0.1:3306/"
MARIADB_SOCKET=/run/mysqld/mysqld.sock
MARIADB_WAIT=${MARIADB_WAIT:-60}
DB_STATE=""

export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# redact URL: the URL with its password replaced by ***
redact() { printf '%s' "$1" | sed -E 's#^([a-z]+://[^:/@]*):[^@]*@#\1:***@#'; }

# as_root CMD...: run CMD as root: directly, or through sudo when we are not root.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
  else
    die "need root for: $*  (run as root, or install sudo)"
  fi
}

# find_python: print a python command of version 3.11 or newer.
find_python() {
  local candidate
  for candidate in python3.11 python3 python3.12 python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# ensure_venv SPEC: a venv at .venv with the project installed editable (SPEC is what
# pip installs, e.g. ".[test]").  An existing venv is reused when its python works.
ensure_venv() {
  local spec=$1 python
  step "creating venv at .venv"
  python=$(find_python) || die "Python 3.11 or newer is needed (python3.11 or python3)"
  if "$VENV_PY" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    note "reusing .venv ($("$VENV_PY" --version))"
  elif ! "$python" -m venv --clear "$VENV"; then
    # Debian's python3 needs its venv package for ensurepip.
    case $python in
      /usr/bin/*) ;;
      *) die "cannot create .venv with $python" ;;
    esac
    local version
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    step "installing python$version-venv (Debian)"
    apt_install "python$version-venv"
    "$python" -m venv --clear "$VENV" || die "cannot create .venv with $python"
  else
    note "created .venv with $("$VENV_PY" --version)"
  fi
  step "installing jobd ($spec) into .venv"
  (cd "$JOBD_ROOT" && "$VENV_PY" -m pip install --quiet -e "$spec")
}

# apt_install PACKAGE...: Debian packages, non-interactively (apt-get update first).
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# db_state URL: print ok, denied or down (see helper.py probe).
db_state() { "$VENV_PY" "$HELPER" probe "$1"; }

# ensure_mariadb URL [explicit]: make sure the server of URL answers.  When nothing answers
# and URL is the local default (and not `explicit`, i.e. given by the user), install Debian's
# mariadb-server if needed and start it.  Sets DB_STATE.
ensure_mariadb() {
  local url=$1 explicit=${2:-}
  step "checking MariaDB at $(redact "$url")"
  DB_STATE=$(db_state "$url")
  if [ "$DB_STATE" != down ]; then
    note "server answers ($DB_STATE)"
    return 0
  fi
  if [ -n "$explicit" ]; then
    die "no database server answers at $(redact "$url")"
  fi
  if [ "$url" != "$LOCAL_SERVER_URL" ]; then
    die "no database server answers at $(redact "$url"); only the local default is started here"
  fi
  note "nothing answers at 127.0.0.1:3306"
  if [ ! -x /usr/sbin/mariadbd ]; then
    step "installing mariadb-server (Debian)"
    apt_install mariadb-server
  fi
  start_mariadb
  step "waiting for MariaDB (at most $MARIADB_WAIT s)"
  local waited=0
  while :; do
    DB_STATE=$(db_state "$url")
    [ "$DB_STATE" = down ] || break
    [ "$waited" -lt "$MARIADB_WAIT" ] ||
      die "MariaDB did not answer within $MARIADB_WAIT s (see its error log, /var/log/mysql/)"
    sleep 1
    waited=$((waited + 1))
  done
  note "server answers after ${waited} s ($DB_STATE)"
}

start_mariadb() {
  step "starting MariaDB"
  if [ ! -d /var/lib/mysql/mysql ]; then
    note "initialising the data directory /var/lib/mysql"
    as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  as_root install -d -o mysql -g mysql -m 0755 /run/mysqld
  if command -v start-stop-daemon >/dev/null 2>&1; then
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
      -- --user=mysql
  else
    as_root service mariadb start
  fi
}

# root_sql: run the SQL on stdin as the server's root over the local socket (Debian's root
# logs in there by unix_socket authentication, with no password).
root_sql() {
  command -v mariadb >/dev/null 2>&1 || die "the mariadb client is missing (apt-get install mariadb-client)"
  as_root mariadb --protocol=socket --socket="$MARIADB_SOCKET" -uroot
}

# allow_root_tcp: let root log in from 127.0.0.1 with an empty password (a test machine's
# setup; a fresh Debian install allows root only over the socket).
allow_root_tcp() {
  step "allowing root@127.0.0.1 with an empty password (for the tests)"
  root_sql <<'SQL'
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
SQL
  DB_STATE=$(db_state "$LOCAL_SERVER_URL")
  if [ "$DB_STATE" = denied ]; then
    # With name resolution on, a TCP client from 127.0.0.1 is root@localhost.
    note "still refused: also letting root@localhost use an empty password"
    root_sql <<'SQL'
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
SQL
    DB_STATE=$(db_state "$LOCAL_SERVER_URL")
  fi
  [ "$DB_STATE" = ok ] || die "root@127.0.0.1 still cannot log in ($DB_STATE)"
}
