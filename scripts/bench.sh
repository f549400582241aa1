#!/usr/bin/env bash
# Measures the paid hot path against the plain proxy on this machine: installs what is missing
# (Rust, anvil from npm), builds opentab in release mode and runs `opentab bench`, which starts
# its own chain, upstream and proxies, prints a table and writes bench.json. It uses the local
# PostgreSQL and Redis when they answer (runs on them are skipped otherwise). Extra arguments
# go to `opentab bench` (try --help), e.g. scripts/bench.sh --keys 1000 --upstream-delay-ms 50
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

stage "toolchains and npm packages"
ensure_toolchains
ensure_contract_tools

stage "build opentab (release)"
cargo build --release --locked -p opentab
stage_end

exec ./target/release/opentab bench "$@"
