#!/usr/bin/env bash
# TimescaleDB for the tests, on a machine without Docker (the python-svc kind).
#
#   deploy/timescaledb.sh build   # once per machine: build 2.17.2 into a private PostgreSQL 15
#   deploy/timescaledb.sh start   # a private cluster preloading it on 127.0.0.1:$HCP_TSDB_PORT
#
# The system PostgreSQL on 5432 is left exactly as it was: the extension is installed into a
# private copy of PostgreSQL 15's binaries, libraries and share files (PostgreSQL finds its
# share and lib directories relative to its binary, so the copy is self-contained), and the
# cluster that preloads it runs from that copy on its own port. `build` leaves a stamp, so a
# second run (CI's next job on the same machine) costs nothing.
set -euo pipefail

VERSION=2.17.2
PG=15
ROOT=${HCP_TSDB_ROOT:-/var/cache/hcp/timescaledb-$VERSION-pg$PG}
DATA=${HCP_TSDB_DATA:-/var/lib/hcp/timescaledb-pg$PG}
PORT=${HCP_TSDB_PORT:-5433}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
BIN=$ROOT/usr/lib/postgresql/$PG/bin

tarball() {
  for t in "${HCP_TIMESCALEDB_TARBALL:-}" "$HERE/../shared/vendor/timescaledb-$VERSION.tar.gz" \
           "/work/shared/vendor/timescaledb-$VERSION.tar.gz"; do
    [ -n "$t" ] && [ -f "$t" ] && { echo "$t"; return; }
  done
  echo "timescaledb-$VERSION.tar.gz not found: put it in ../shared/vendor/ or set" \
       "HCP_TIMESCALEDB_TARBALL" >&2
  exit 1
}

build() {
  [ -f "$ROOT/.built" ] && return
  local src
  src=$(tarball)
  local missing=""
  for p in postgresql-server-dev-$PG libkrb5-dev cmake; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "installing$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
  fi
  echo "building TimescaleDB $VERSION into $ROOT (a few minutes, once per machine)"
  rm -rf "$ROOT"
  mkdir -p "$ROOT/usr/lib/postgresql" "$ROOT/usr/share/postgresql"
  cp -a /usr/lib/postgresql/$PG "$ROOT/usr/lib/postgresql/"
  cp -a /usr/share/postgresql/$PG "$ROOT/usr/share/postgresql/"
  local work
  work=$(mktemp -d)
  tar xzf "$src" -C "$work"
  (
    cd "$work/timescaledb-$VERSION"
    ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
      -DPG_CONFIG=/usr/bin/pg_config >"$work/bootstrap.log" 2>&1 \
      || { tail -20 "$work/bootstrap.log" >&2; exit 1; }
    make -C build -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -20 "$work/make.log" >&2; exit 1; }
    make -C build install DESTDIR="$ROOT" >"$work/install.log" 2>&1 \
      || { tail -20 "$work/install.log" >&2; exit 1; }
  )
  rm -rf "$work"
  chmod -R a+rX "$ROOT"
  touch "$ROOT/.built"
  echo "TimescaleDB $VERSION built into $ROOT"
}

up() { "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -q 2>/dev/null; }

start() {
  build
  if up; then return; fi
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  if [ ! -f "$DATA/PG_VERSION" ]; then
    $SUDO mkdir -p "$DATA"
    $SUDO chown postgres "$DATA" 2>/dev/null || true
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null
    cat >>"$DATA/postgresql.conf" <<EOF
shared_preload_libraries = 'timescaledb'
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '/tmp'
timescaledb.telemetry_level = off
# No background jobs: the tests write fixed, past timestamps that the retention, compression
# and refresh policies would act on at random moments; the tests compress chunks and
# refresh the continuous aggregate themselves.
timescaledb.max_background_workers = 0
max_connections = 200
fsync = off
EOF
  fi
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w start >/dev/null
  for _ in $(seq 1 30); do up && break; sleep 1; done
  up || { echo "the TimescaleDB cluster did not start; see $DATA/server.log" >&2; exit 1; }
  echo "TimescaleDB $VERSION (PostgreSQL $PG) on 127.0.0.1:$PORT"
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  *) echo "usage: $0 build|start" >&2; exit 2 ;;
esac
