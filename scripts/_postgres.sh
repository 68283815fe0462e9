# Sourced by scripts/test: a throwaway PostgreSQL server for the call-log tests.
# Installs Debian's postgresql when missing (root only), runs a private cluster in a temp dir on a
# free loopback port with trust auth (nothing else can reach it), exports GATEWAY_TEST_POSTGRES_URL
# and stops/removes it on exit. Where that is impossible it exports GATEWAY_TEST_POSTGRES_SKIP with
# the reason, and the PostgreSQL tests are reported as skipped with it.

_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

start_test_postgres() {
  local bin dir port as_user=()
  bin="$(_pg_bin)"
  if [ -z "$bin" ]; then
    apt_install_for_tests postgresql "the call-log tests"
    bin="$(_pg_bin)"
  fi
  if [ -z "$bin" ]; then
    export GATEWAY_TEST_POSTGRES_SKIP="no PostgreSQL server binaries, and they could not be installed"
    echo "warning: $GATEWAY_TEST_POSTGRES_SKIP" >&2
    return 0
  fi
  dir="$(mktemp -d /tmp/gw-test-pg.XXXXXX)"
  if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root
    chown postgres: "$dir" 2>/dev/null && as_user=(runuser -u postgres --)
  fi
  port="$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  if "${as_user[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
     && "${as_user[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
          -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null 2>&1; then
    export GATEWAY_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/postgres"
    _GW_PG=("${as_user[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop)
    _GW_PG_DIR="$dir"
    trap 'stop_test_postgres' EXIT
    echo "==> PostgreSQL $("$bin/postgres" --version | awk "{print \$3}") on 127.0.0.1:$port for the tests" >&2
  else
    export GATEWAY_TEST_POSTGRES_SKIP="the server did not start (see $dir/*.log)"
    echo "warning: PostgreSQL $GATEWAY_TEST_POSTGRES_SKIP" >&2
    tail -5 "$dir"/*.log >&2 || true
  fi
}

stop_test_postgres() {
  if [ -n "${_GW_PG_DIR:-}" ]; then
    "${_GW_PG[@]}" >/dev/null 2>&1 || true
    rm -rf "$_GW_PG_DIR"
    _GW_PG_DIR=""
  fi
}
