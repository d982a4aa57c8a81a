#!/usr/bin/env bash
# The benchmark on the testbed: swivel against the offline ALTER, the copy floor and
# pt-online-schema-change / pg_repack, on a 1,000,000-row table under 200 writes/s, on
# PostgreSQL and on MariaDB (or one: ./bench.sh postgres | ./bench.sh mariadb). Extra
# arguments go to `swivel bench` (e.g. --rows 10000000). Reports land in swivel-bench/.
# ./bench.sh pg-versions: PostgreSQL 15 and 17 in one run (the copy's plain and origin-filtered
# paths). ./bench.sh applier [ROWS]: the applier's throughput (benches/applier.sh).
set -euo pipefail
cd "$(dirname "$0")"
which=${1:-all}
[ $# -gt 0 ] && shift
testbed/testbed.sh start
testbed/testbed.sh tools
cargo build --release --bin swivel
pg=postgres://postgres@127.0.0.1:55432/swivel
my=mysql://root@127.0.0.1:33306/swivel
case "$which" in
    applier)
        # The applier's throughput: bulk and single-row transactions, both servers.
        for server in postgres mariadb; do
            for mode in bulk small; do
                MODE=$mode benches/applier.sh "$server" "${1:-200000}"
            done
        done
        exit 0
        ;;
    postgres) dsns=("$pg") ;;
    mariadb|mysql) dsns=("$my") ;;
    all) dsns=("$pg" "$my") ;;
    pg-versions)
        # The copy's two paths in one run: PostgreSQL 15 (plain: the walsender decodes the
        # copy's writes) and 17 (origin-filtered), against the baselines both can run.
        testbed/testbed.sh start pg17
        for port in 55432 55417; do
            target/release/swivel bench --dsn "postgres://postgres@127.0.0.1:$port/swivel" \
                --report "swivel-bench/pg-versions/$port" --baselines offline,copy-floor "$@"
        done
        exit 0
        ;;
    *) echo "usage: $0 [postgres|mariadb|all|pg-versions] [swivel bench options]" >&2; exit 2 ;;
esac
for dsn in "${dsns[@]}"; do
    target/release/swivel bench --dsn "$dsn" --report swivel-bench "$@"
done
