#!/usr/bin/env bash
# Run a command beside a throwaway PostgreSQL cluster (temp dir, free port, loopback only).
# The command sees SENDGUARD_TEST_DATABASE_URL; the cluster is stopped and removed afterwards.
# Without the PostgreSQL binaries the command still runs and the postgres tests report why they skip.
set -uo pipefail
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [[ -z "$pgbin" || ! -x "$pgbin/pg_ctl" ]]; then
    echo "with-postgres: no PostgreSQL server binaries found; running without SENDGUARD_TEST_DATABASE_URL" >&2
    exec "$@"
fi
dir=$(mktemp -d /tmp/sendguard-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
    chown postgres "$dir"
    as_pg=(runuser -u postgres --)
fi
cleanup() {
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1
    rm -rf "$dir"
}
trap cleanup EXIT
"${as_pg[@]}" "$pgbin/initdb" -D "$dir/data" -A trust -U sendguard >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$dir/log" >&2; exit 1; }
export SENDGUARD_TEST_DATABASE_URL="postgresql+psycopg://sendguard@127.0.0.1:$port/postgres"
echo "with-postgres: PostgreSQL on 127.0.0.1:$port"
"$@"
