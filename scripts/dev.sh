#!/usr/bin/env bash
# Sets a fresh machine up (Debian packages, npm tools, a release build) and starts opentab's
# main job on the embedded default, `opentab dev`: a local chain with the contracts deployed
# and a funded demo owner, a SQLite database, the chain listener, the REST API, the demo paid
# API, settlement and the web UI on http://127.0.0.1:8402. Extra arguments go to `opentab dev`
# (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

stage "toolchains and npm packages"
ensure_toolchains
ensure_contract_tools
ensure_web_tools

stage "build the web UI"
npm --prefix web run --silent build

stage "build opentab (release)"
cargo build --release --locked -p opentab
stage_end

exec ./target/release/opentab dev "$@"
