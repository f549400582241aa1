#!/usr/bin/env bash
# The production topology on this machine, by one command: installs what is missing (Rust,
# anvil from npm, PostgreSQL's server, redis-server and redis-cli), builds opentab in release
# mode and runs `opentab cluster`, which starts anvil, a PostgreSQL of its own, a Redis Cluster
# (3 masters, 3 replicas), two `opentab serve` nodes and N `opentab proxy` nodes, prints where
# they are, writes cluster.json and stops them all on Ctrl-C.
#   scripts/cluster.sh --proxies 4            the topology, until Ctrl-C
#   scripts/cluster.sh chaos [--short]        the fault suite on it (opentab chaos)
# In another terminal, `./target/release/opentab bench --cluster cluster.json` drives load
# across its proxies.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

stage "toolchains, npm packages, PostgreSQL and Redis"
ensure_toolchains
ensure_contract_tools
ensure_cluster_tools

stage "build opentab (release)"
cargo build --release --locked -p opentab
stage_end

if [ "${1:-}" = chaos ]; then
  shift
  exec ./target/release/opentab chaos "$@"
fi
exec ./target/release/opentab cluster "$@"
