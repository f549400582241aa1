#!/usr/bin/env bash
# Runs every test of opentab: the forge suite (unit, fuzz, invariant, gas snapshot), the check
# that the committed contract artifacts are current, the Rust suite (real anvil chains, a real
# PostgreSQL and Redis — the local ones, or ones of its own — and SQLite, and schemathesis
# against the live API's OpenAPI document), `opentab chaos --short` (the cluster topology under
# faults, with the conservation check), cargo mutants on the money rules, the cargo-fuzz
# targets (a minute each), the TypeScript packages (the Express middleware and
# the paying client against a real `opentab dev`, and their tarballs installed outside the repo),
# the Python SDK (pytest against `opentab dev`, and its wheel in a fresh virtualenv), and the web UI (component tests, then the
# whole owner journey in Debian's Chromium against a real `opentab dev`).
# Installs what it needs first. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
trap 'stop_postgres; stop_redis; print_timings' EXIT

stage "toolchains, npm and PyPI packages"
ensure_toolchains
ensure_contract_tools
ensure_package_tools
ensure_web_tools
ensure_chromium
ensure_schemathesis
ensure_python_upstreams

stage "contracts: build + artifacts"
(cd contracts && ./node_modules/.bin/forge build --quiet && node tools/export-artifacts.mjs --check)

stage "contracts: forge test"
(cd contracts && ./node_modules/.bin/forge test)

stage "contracts: gas snapshot"
(cd contracts && ./node_modules/.bin/forge snapshot --match-contract GasTest --check)
# forge test rewrote contracts/snapshots/: a difference means the committed gas figures are stale.
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- contracts/snapshots; then
  git diff -- contracts/snapshots
  echo "gas per operation changed: commit contracts/snapshots/ and update the README's gas table" >&2
  exit 1
fi

stage "rust: fmt"
cargo fmt --all --check

stage "rust: lint (clippy, warnings are errors)"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
# The gateway node must stay lean: no REST API, mail client or OpenAPI generator in its build.
if cargo tree -p opentab-proxy -e normal --locked --prefix none | grep -E '^(opentab-service|lettre|utoipa) '; then
  echo "opentab-proxy links a crate it must not (above): see crates/proxy/Cargo.toml" >&2
  exit 1
fi

stage "rust: build"
cargo build --workspace --all-targets --locked

stage "rust: tests (real anvil, PostgreSQL, SQLite, Redis)"
ensure_postgres
ensure_redis
ensure_cluster_tools
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "(cargo-nextest not installed: using cargo test; 'cargo install cargo-nextest' makes this faster)"
  cargo test --workspace --locked --no-fail-fast
fi

stage "chaos: opentab chaos --short (the cluster topology under faults, conservation checked)"
# Its own PostgreSQL, Redis Cluster (3 masters, 3 replicas), two serve nodes and three proxies;
# FLUSHALL, a proxy killed mid-charge, a PostgreSQL restart, a Redis master killed, a reorg
# during settlement. Prints the
# table (calls, lost, doubled, recovery); any lost or doubled call fails the stage.
"${CARGO_TARGET_DIR:-target}/debug/opentab" chaos --short --json "${CARGO_TARGET_DIR:-target}/chaos.json"

stage "rust: doc examples"
cargo test --workspace --locked --doc --quiet

stage "rust: mutants of the money and freeze rules (cargo mutants: every mutant must be caught)"
ensure_cargo_mutants
# The pure rules that decide money (the charge, amounts, settlement timing, tab and key folds)
# and those that freeze keys (the rule engine's rules and settings). Each surviving mutant is a
# rule no test pins down; the list is in target/mutants.
cargo mutants --package opentab-core --output target/mutants --no-shuffle --colors never \
  --file crates/core/src/charge.rs --file crates/core/src/amount.rs \
  --file crates/core/src/settlement.rs --file crates/core/src/events.rs \
  --file crates/core/src/rules.rs

stage "rust: fuzz (cargo fuzz: x402 header, SIWE, routes)"
# One instrumented build of the three targets, then each for OPENTAB_FUZZ_SECS (60) seconds from
# its committed seeds (fuzz/README.md); a crash fails the stage and its input is kept in
# fuzz/artifacts/.
scripts/fuzz.sh

stage "typescript: typecheck"
(cd packages && npm run --silent typecheck)

stage "typescript: tests (Express middleware, paying client, against opentab dev)"
(cd packages && OPENTAB_BIN="${CARGO_TARGET_DIR:-$PWD/../target}/debug/opentab" ./node_modules/.bin/vitest run)

stage "python: SDK (ASGI middleware, httpx client, the wheel in a fresh venv, against opentab dev)"
# Its own virtualenv (python/.venv), the package editable with its pinned test extras from PyPI.
python/run-tests.sh -q

stage "web: typecheck + build"
npm --prefix web run --silent build

stage "web: component tests (Vitest, Testing Library)"
(cd web && ./node_modules/.bin/vitest run)

stage "web: browser end-to-end (Chromium, opentab dev)"
(cd web && OPENTAB_BIN="${CARGO_TARGET_DIR:-$PWD/../target}/debug/opentab" ./node_modules/.bin/vitest run -c vitest.e2e.config.ts)
