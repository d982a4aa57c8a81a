#!/usr/bin/env bash
# End-to-end demo: start the testbed, build swivel, migrate a 1,000,000-row table under writes
# on PostgreSQL and on MariaDB (or only one: ./demo.sh postgres | ./demo.sh mariadb).
set -euo pipefail
cd "$(dirname "$0")"
testbed/testbed.sh start
cargo build --release --bin swivel --example demo
exec target/release/examples/demo "${1:-all}"
