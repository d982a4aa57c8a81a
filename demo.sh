#!/usr/bin/env bash
# End-to-end demo: start the testbed, build swivel, migrate a 1,000,000-row table under writes.
set -euo pipefail
cd "$(dirname "$0")"
testbed/testbed.sh start
cargo build --release --bin swivel --example demo
exec target/release/examples/demo
