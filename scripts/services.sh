#!/usr/bin/env bash
# Make sure the services the tests need are reachable:
#   - PostgreSQL on 127.0.0.1:5432, user postgres, no password
#   - NATS with JetStream on 127.0.0.1:4222
# and that the browser the steward page's test drives is installed:
#   - /usr/bin/chromium and /usr/bin/chromedriver (Debian's chromium, chromium-driver)
#
# If a service is already reachable it is left alone. Otherwise it is started and, on
# Debian/Ubuntu, installed first (apt-get). Installing, reconfiguring or starting a service
# needs root; checking running services does not. Idempotent, never prompts, works from any
# directory. Creates no databases: the tests create their own.
#
# To test this script itself against throwaway instances, the following can be overridden:
#   IDLEDGER_PG_PORT (5432), IDLEDGER_PG_CLUSTER (main), IDLEDGER_NATS_PORT (4222),
#   IDLEDGER_NATS_STORE_DIR (/var/lib/nats-server), IDLEDGER_NATS_LOG (/var/log/nats-server.log),
#   IDLEDGER_NATS_PIDFILE (/run/idledger-nats-server.pid)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

readonly HOST=127.0.0.1
readonly WAIT_SECONDS=30
readonly PG_PORT=${IDLEDGER_PG_PORT:-5432}
readonly PG_CLUSTER=${IDLEDGER_PG_CLUSTER:-main}
readonly NATS_BIN=/usr/sbin/nats-server
readonly NATS_PORT=${IDLEDGER_NATS_PORT:-4222}
readonly NATS_STORE_DIR=${IDLEDGER_NATS_STORE_DIR:-/var/lib/nats-server}
readonly NATS_LOG=${IDLEDGER_NATS_LOG:-/var/log/nats-server.log}
readonly NATS_PIDFILE=${IDLEDGER_NATS_PIDFILE:-/run/idledger-nats-server.pid}
readonly HBA_MARKER='# added by idledger scripts/services.sh'

die() {
  echo "services.sh: error: $*" >&2
  exit 1
}

note() {
  echo "$*"
}

is_root() {
  [ "$(id -u)" -eq 0 ]
}

# need_root <what we are about to do> <the command a human could run instead>
need_root() {
  is_root || die "$1 needs root. Run this script as root (e.g. sudo bash scripts/services.sh), or do it yourself: $2"
}

# wait_for <command...>: retry the command for up to WAIT_SECONDS.
wait_for() {
  local deadline=$((SECONDS + WAIT_SECONDS))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

tcp_open() {
  # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found; install $* yourself (this script only knows Debian/Ubuntu)"
  need_root "installing $*" "apt-get install $*"
  local log
  log=$(mktemp /tmp/idledger-apt.XXXXXX.log)
  note "installing $* with apt-get (log: $log)"
  if [ -z "$APT_UPDATED" ]; then
    apt-get update -q >>"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed (log: $log)"; }
    APT_UPDATED=1
  fi
  apt-get install -y -q "$@" >>"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get install $* failed (log: $log)"; }
}

# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------

pg_up() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2 2>/dev/null
  else
    tcp_open "$HOST" "$PG_PORT"
  fi
}

# Pick the local Debian cluster to use: the one configured for PG_PORT, else PG_CLUSTER
# of the first installed version. Sets PG_VERSION, PG_NAME, PG_OWNER; fails if none.
pg_pick_cluster() {
  local line
  command -v pg_lsclusters >/dev/null || return 1
  line=$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" -v name="$PG_CLUSTER" '
    $3 == port { print $1, $2, $5; found = 1; exit }
    $2 == name && fallback == "" { fallback = $1 " " $2 " " $5 }
    END { if (!found && fallback != "") print fallback }')
  [ -n "$line" ] || return 1
  read -r PG_VERSION PG_NAME PG_OWNER <<<"$line"
}

pg_cluster_running() {
  pg_ctlcluster "$PG_VERSION" "$PG_NAME" status >/dev/null 2>&1
}

pg_ctl() {
  pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_NAME" "$1" ||
    die "pg_ctlcluster $PG_VERSION $PG_NAME $1 failed; see /var/log/postgresql/postgresql-$PG_VERSION-$PG_NAME.log"
}

# Effective value of a server setting, as the server would read it (postgresql.conf + includes).
pg_setting() {
  runuser -u "$PG_OWNER" -- "/usr/lib/postgresql/$PG_VERSION/bin/postgres" -C "$1" \
    --config-file="/etc/postgresql/$PG_VERSION/$PG_NAME/postgresql.conf"
}

pg_listens_on_host() {
  local addrs=$1 a
  local -a list
  IFS=', ' read -r -a list <<<"$addrs"
  for a in "${list[@]}"; do
    case $a in '*' | 0.0.0.0 | 127.0.0.1 | localhost) return 0 ;; esac
  done
  return 1
}

# Make the cluster listen on 127.0.0.1:PG_PORT, with a conf.d override if it does not already.
pg_ensure_listen() {
  local port addrs conf
  port=$(pg_setting port)
  addrs=$(pg_setting listen_addresses)
  if [ "$port" = "$PG_PORT" ] && pg_listens_on_host "$addrs"; then
    return 0
  fi
  pg_listens_on_host "$addrs" || addrs="${addrs:+$addrs,}$HOST"
  conf=/etc/postgresql/$PG_VERSION/$PG_NAME/conf.d/zz-idledger-services.conf
  mkdir -p "$(dirname "$conf")"
  printf '%s so the tests can reach this cluster\nport = %s\nlisten_addresses = '\''%s'\''\n' \
    "$HBA_MARKER" "$PG_PORT" "$addrs" >"$conf"
  if [ "$(pg_setting port)" != "$PG_PORT" ] || ! pg_listens_on_host "$(pg_setting listen_addresses)"; then
    die "could not make cluster $PG_VERSION/$PG_NAME listen on $HOST:$PG_PORT via $conf (is include_dir = 'conf.d' in its postgresql.conf?)"
  fi
  note "postgres: wrote $conf (port = $PG_PORT, listen_addresses = '$addrs')"
}

pg_start() {
  if ! command -v pg_ctlcluster >/dev/null || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    is_root || die "PostgreSQL is not running on $HOST:$PG_PORT and is not installed. Install it (as root: apt-get install postgresql), or run this script as root to do that."
    apt_install postgresql
  fi
  if ! pg_pick_cluster; then
    # Server installed but no cluster (e.g. create_main_cluster = false, or it was dropped).
    local major
    major=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    need_root "creating PostgreSQL cluster $major/$PG_CLUSTER" "pg_createcluster $major $PG_CLUSTER -p $PG_PORT"
    pg_createcluster "$major" "$PG_CLUSTER" -p "$PG_PORT" >/dev/null
    pg_pick_cluster || die "created cluster $major/$PG_CLUSTER but pg_lsclusters does not list it"
    note "postgres: created cluster $PG_VERSION/$PG_NAME"
  fi
  need_root "starting PostgreSQL cluster $PG_VERSION/$PG_NAME" \
    "pg_ctlcluster --skip-systemctl-redirect $PG_VERSION $PG_NAME start"
  pg_ensure_listen
  local action=start
  # Running but not reachable on our address: its configuration was just fixed above.
  if pg_cluster_running; then action=restart; fi
  pg_ctl "$action"
  wait_for pg_up ||
    die "PostgreSQL $PG_VERSION/$PG_NAME is not ready on $HOST:$PG_PORT after ${WAIT_SECONDS}s; see /var/log/postgresql/postgresql-$PG_VERSION-$PG_NAME.log"
  echo "postgres: ${action}ed cluster $PG_VERSION/$PG_NAME on $HOST:$PG_PORT"
}

pg_select_1() {
  PGCONNECT_TIMEOUT=5 psql -X -w -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'select 1' 2>&1
}

# Let user postgres log in over TCP from 127.0.0.1 and ::1 without a password. The lines go
# first in pg_hba.conf because the first matching line wins.
pg_allow_trust() {
  local hba=$1 tmp
  [ -e "$hba.idledger-orig" ] || cp -p "$hba" "$hba.idledger-orig"
  tmp=$(mktemp)
  {
    echo "$HBA_MARKER: passwordless TCP logins as postgres from this machine, for the tests"
    echo "host    all    postgres    127.0.0.1/32    trust"
    echo "host    all    postgres    ::1/128         trust"
    echo
    cat "$hba"
  } >"$tmp"
  cat "$tmp" >"$hba" # keeps the file's owner and mode
  rm -f "$tmp"
  pg_ctl reload
  note "postgres: allowed passwordless TCP logins as postgres from 127.0.0.1 and ::1 in $hba (original kept as $hba.idledger-orig)"
}

pg_login_ok() {
  [ "$(pg_select_1)" = 1 ]
}

pg_verify() {
  local out
  if ! command -v psql >/dev/null; then
    is_root || die "psql not found; install it (as root: apt-get install postgresql-client)"
    apt_install postgresql-client
  fi
  out=$(pg_select_1) && [ "$out" = 1 ] && return 0
  # Refused at login: if a local cluster serves this port and we have not already added our
  # lines to its pg_hba.conf (once only), allow the test user and try again.
  if [[ $out == *authentication* || $out == *password* || $out == *pg_hba.conf* ]] &&
    is_root && pg_pick_cluster && pg_cluster_running; then
    local hba
    hba=$(pg_setting hba_file)
    if ! grep -qF "$HBA_MARKER" "$hba"; then
      pg_allow_trust "$hba"
      wait_for pg_login_ok && return 0
      out=$(pg_select_1) || true
    fi
  fi
  die "psql -h $HOST -p $PG_PORT -U postgres -d postgres -c 'select 1' failed: ${out:-no output}
The tests need user postgres to log in over TCP from $HOST without a password, e.g. with
'host all postgres 127.0.0.1/32 trust' as the first line of pg_hba.conf (then reload PostgreSQL)."
}

ensure_postgres() {
  if pg_up; then
    echo "postgres: already running on $HOST:$PG_PORT"
  else
    pg_start
  fi
  pg_verify
}

# ---------------------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------------------

# The INFO line a NATS server sends as soon as a client connects.
nats_info() {
  # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && head -n 1 <&3' _ "$HOST" "$NATS_PORT" 2>/dev/null
}

nats_up() {
  nats_info >/dev/null
}

nats_started_alive() {
  start-stop-daemon --status --pidfile "$NATS_PIDFILE" --exec "$NATS_BIN"
}

nats_start() {
  if [ ! -x "$NATS_BIN" ]; then
    is_root || die "NATS is not running on $HOST:$NATS_PORT and $NATS_BIN is not installed. Install it (as root: apt-get install nats-server), or run this script as root to do that."
    apt_install nats-server
  fi
  local args=(-a "$HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE_DIR" -l "$NATS_LOG")
  need_root "starting nats-server" "$NATS_BIN ${args[*]} &"
  mkdir -p "$NATS_STORE_DIR"
  # The pidfile makes start-stop-daemon ignore other nats-server processes (e.g. the
  # packaged service on another port) instead of treating them as "already running".
  start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$NATS_PIDFILE" \
    --exec "$NATS_BIN" -- "${args[@]}"
  local started=$SECONDS
  until nats_up; do
    # Give up early if it died (after a moment: the child writes the pidfile just before exec).
    if [ $((SECONDS - started)) -ge "$WAIT_SECONDS" ] ||
      { [ $((SECONDS - started)) -ge 2 ] && ! nats_started_alive; }; then
      tail -n 15 "$NATS_LOG" >&2 2>/dev/null || true
      die "nats-server is not accepting connections on $HOST:$NATS_PORT; see $NATS_LOG"
    fi
    sleep 0.5
  done
  echo "nats: started $NATS_BIN with JetStream on $HOST:$NATS_PORT (pid $(cat "$NATS_PIDFILE"), store $NATS_STORE_DIR, log $NATS_LOG)"
}

ensure_nats() {
  local info
  if nats_up; then
    echo "nats: already running on $HOST:$NATS_PORT"
  else
    nats_start
  fi
  info=$(nats_info) || true
  case $info in
    INFO*'"jetstream":true'*) ;;
    INFO*) die "the NATS server on $HOST:$NATS_PORT does not have JetStream enabled; the tests need it (start nats-server with -js)" ;;
    *) die "whatever listens on $HOST:$NATS_PORT does not answer like a NATS server" ;;
  esac
}

# ---------------------------------------------------------------------------------------
# Chromium (headless, for crates/api/tests/steward_page.rs)
# ---------------------------------------------------------------------------------------

readonly CHROMIUM_BIN=/usr/bin/chromium
readonly CHROMEDRIVER_BIN=/usr/bin/chromedriver

ensure_chromium() {
  if [ -x "$CHROMIUM_BIN" ] && [ -x "$CHROMEDRIVER_BIN" ]; then
    echo "chromium: $CHROMIUM_BIN and $CHROMEDRIVER_BIN are installed"
    return 0
  fi
  is_root || die "$CHROMIUM_BIN or $CHROMEDRIVER_BIN is missing; the steward page's browser test needs them. Install them (as root: apt-get install -y chromium chromium-driver), or run this script as root to do that."
  apt_install chromium chromium-driver
  [ -x "$CHROMIUM_BIN" ] && [ -x "$CHROMEDRIVER_BIN" ] ||
    die "installed chromium and chromium-driver, but $CHROMIUM_BIN or $CHROMEDRIVER_BIN is still missing"
  echo "chromium: installed $("$CHROMEDRIVER_BIN" --version 2>/dev/null | head -n 1)"
}

ensure_postgres
ensure_nats
ensure_chromium
