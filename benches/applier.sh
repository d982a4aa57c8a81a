#!/usr/bin/env bash
# The applier's throughput on the testbed: a run is copied and caught up (its cut-over
# postponed), then ROWS row changes are written at once, and the script measures how long
# after the last commit swivel has replayed them all (its status file's changes_applied).
#   MODE=bulk  (default) one UPDATE of every row, one transaction
#   MODE=small one UPDATE per row, each its own transaction (an OLTP writer, as fast as the
#              server commits)
# usage: benches/applier.sh postgres|mariadb ROWS [extra swivel run arguments]
# (./bench.sh applier runs both modes on both servers.)
set -euo pipefail
server=$1; rows=$2; shift 2
S=${SWIVEL:-$(cd "$(dirname "$0")/.." && pwd)/target/release/swivel}
T=applybench
dir=/tmp/applybench-$server; rm -rf $dir; mkdir -p $dir
if [ $server = postgres ]; then
  D=postgres://postgres@127.0.0.1:55432/swivel
  q() { psql -qAt $D -c "$1"; }
  q "DROP TABLE IF EXISTS $T, _${T}_old CASCADE" 2>/dev/null
  q "CREATE TABLE $T (id int PRIMARY KEY, k int NOT NULL, pad text NOT NULL)"
  q "INSERT INTO $T SELECT i, i, repeat('x', 40) FROM generate_series(1, $rows) i"
  q "ANALYZE $T"
  alter="ALTER COLUMN k TYPE bigint"
else
  D=mysql://root@127.0.0.1:33306/swivel
  q() { mysql -h127.0.0.1 -P33306 -uroot swivel -N -e "$1"; }
  q "DROP TABLE IF EXISTS $T, _${T}_old"
  q "CREATE TABLE $T (id int PRIMARY KEY, k int NOT NULL, pad varchar(64) NOT NULL)"
  q "INSERT INTO $T SELECT seq, seq, repeat('x', 40) FROM seq_1_to_$rows"
  q "ANALYZE TABLE $T" >/dev/null
  alter="MODIFY k BIGINT NOT NULL"
fi
# changes_applied in the status file's last line (0 while it is being written).
applied() {
  tail -1 $dir/status.json | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["changes_applied"])
except Exception: print(0)'
}
touch $dir/postpone
$S run --dsn $D --table $T --alter "$alter" --execute --postpone-cut-over-flag-file $dir/postpone \
   --status-file $dir/status.json --status-interval 50ms --progress-interval 1h "$@" > $dir/out 2> $dir/err &
pid=$!
until grep -q '"phase":"catch-up"' $dir/status.json 2>/dev/null; do sleep 0.1; done
sleep 1
before=$(applied)
t0=$(date +%s.%N)
if [ "${MODE:-bulk}" = small ]; then
  # One row per transaction, as an OLTP application writes.
  if [ $server = postgres ]; then
    q "DO \$\$ BEGIN FOR i IN 1..$rows LOOP UPDATE $T SET k = k + 1 WHERE id = i; COMMIT; END LOOP; END \$\$"
  else
    printf 'DELIMITER //\nBEGIN NOT ATOMIC FOR i IN 1..%s DO UPDATE %s SET k = k + 1 WHERE id = i; END FOR; END//\n' $rows $T | mysql -h127.0.0.1 -P33306 -uroot swivel
  fi
else
  q "UPDATE $T SET k = k + 1"
fi
t1=$(date +%s.%N)
target=$((before + rows))
while :; do
  now=$(applied)
  [ "$now" -ge "$target" ] && break
  sleep 0.02
done
t2=$(date +%s.%N)
python3 -c "u=$t1-$t0; a=$t2-$t1; print(f'$server, ${MODE:-bulk}: {$rows} changes; writes took {u:.2f}s; replayed {a:.2f}s after its commit ({$rows/max(a,1e-9):,.0f} changes/s after commit; {$rows/($t2-$t0):,.0f}/s from the first write)')"
rm $dir/postpone; wait $pid || { echo "swivel failed"; tail -5 $dir/err; }
q "DROP TABLE IF EXISTS $T, _${T}_old"
