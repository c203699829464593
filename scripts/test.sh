#!/usr/bin/env bash
# The test command: bash scripts/test.sh [pytest arguments]
#
# Creates .venv, installs jobd with its test extras, makes sure a MariaDB server answers
# (JOBD_TEST_DATABASE_URL=mysql://user:pass@host:port/ if set, else root with an empty
# password at 127.0.0.1:3306, else installs and starts Debian's mariadb-server), installs
# Debian's chromium and chromium-driver if missing (the dashboard's browser tests), then
# runs ruff and pytest.  Exits non-zero on any failure, and when pytest ran no tests (exit 5).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$JOBD_ROOT"

ensure_venv ".[test]"

if [ -n "${JOBD_TEST_DATABASE_URL:-}" ]; then
  ensure_mariadb "$JOBD_TEST_DATABASE_URL" explicit
  [ "$DB_STATE" = ok ] ||
    die "the server at $(redact "$JOBD_TEST_DATABASE_URL") refuses that user and password"
else
  ensure_mariadb "$LOCAL_SERVER_URL"
  [ "$DB_STATE" = ok ] || allow_root_tcp
  export JOBD_TEST_DATABASE_URL=$LOCAL_SERVER_URL
fi

# The systemd tests verify the unit files with systemd-analyze (Debian's systemd).
command -v systemd-analyze >/dev/null || apt_install systemd
# The dashboard's tests drive a real headless Chromium (Debian's, with its driver).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  step "installing chromium and chromium-driver (the dashboard's browser tests)"
  apt_install chromium chromium-driver
fi

step "ruff check ."
"$VENV/bin/ruff" check .
step "ruff format --check ."
"$VENV/bin/ruff" format --check .

step "pytest${*:+ $*}"
status=0
"$VENV_PY" -m pytest "$@" || status=$?
case $status in
  0) step "all tests passed" ;;
  5) printf 'error: pytest ran no tests (exit 5)\n' >&2 ;;
  *) printf 'error: pytest failed (exit %d)\n' "$status" >&2 ;;
esac
exit "$status"
