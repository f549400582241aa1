# Shared by scripts/*.sh: stage timing and prerequisite checks.

stage_started=0
stage() {
  stage_end
  stage_name="$1"
  stage_started=$(date +%s)
  printf '\n==> %s\n' "$stage_name"
}
stage_end() {
  if [ "$stage_started" != 0 ]; then
    local took=$(( $(date +%s) - stage_started ))
    printf '<== %s took %ss\n' "$stage_name" "$took"
    timings+=("$(printf '%-28s %5ss' "$stage_name" "$took")")
    stage_started=0
  fi
}
timings=()
print_timings() {
  stage_end
  printf '\nstage timings:\n'
  printf '  %s\n' "${timings[@]}"
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root for: $*" >&2; return 1; fi
}

# Debian packages the build and tests need; installs only what is missing.
ensure_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

ensure_toolchains() {
  if command -v apt-get >/dev/null; then
    local pkgs=(ca-certificates gcc pkg-config)
    command -v node >/dev/null || pkgs+=(nodejs)
    command -v npm >/dev/null || pkgs+=(npm)
    ensure_debian_packages "${pkgs[@]}"
  fi
  if ! command -v cargo >/dev/null; then
    echo "Rust is not installed. Install it with rustup (https://rustup.rs), then run this again." >&2
    exit 1
  fi
  local node_major
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -lt 18 ]; then
    echo "Node.js $node_major is too old: opentab needs Node.js 18 or newer." >&2
    exit 1
  fi
}

# forge, anvil, cast, solc and OpenZeppelin from npm, pinned by contracts/package-lock.json.
ensure_contract_tools() {
  if [ ! -x contracts/node_modules/.bin/forge ] || [ contracts/package-lock.json -nt contracts/node_modules/.package-lock.json ]; then
    npm ci --prefix contracts --no-audit --no-fund --loglevel=error
  fi
}

# The TypeScript packages' dependencies (Express, supertest, viem, vitest), from packages/'s lockfile.
ensure_package_tools() {
  if [ ! -d packages/node_modules ] || [ packages/package-lock.json -nt packages/node_modules/.package-lock.json ]; then
    npm ci --prefix packages --no-audit --no-fund --loglevel=error
  fi
}

# The web UI's dependencies (React, Vite, shadcn/ui's parts, Vitest, playwright-core).
ensure_web_tools() {
  if [ ! -d web/node_modules ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
    npm ci --prefix web --no-audit --no-fund --loglevel=error
  fi
}

# Debian's Chromium for the browser test (playwright-core drives it; no browser download).
ensure_chromium() {
  if [ -z "${CHROMIUM:-}" ]; then
    command -v chromium >/dev/null || ensure_debian_packages chromium
    export CHROMIUM
    CHROMIUM=$(command -v chromium)
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# PostgreSQL for the store tests: the one on 127.0.0.1:5432 when it answers, otherwise a
# throwaway cluster of our own on a free port (Debian's postgresql package, installed if
# missing), stopped when the script exits. Exports OPENTAB_TEST_POSTGRES (an admin URL).
ensure_postgres() {
  if [ -n "${OPENTAB_TEST_POSTGRES:-}" ]; then return; fi
  if [ -z "${OPENTAB_OWN_POSTGRES:-}" ] && port_open 5432; then
    export OPENTAB_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/postgres
    echo "using the PostgreSQL on 127.0.0.1:5432"
    return
  fi
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ]; then ensure_debian_packages postgresql; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1); fi
  local port=55432
  while port_open "$port"; do port=$((port + 1)); done
  pg_dir=$(mktemp -d /tmp/opentab-pg.XXXXXX)
  local run=()
  # initdb refuses to run as root: use the postgres account Debian's package creates.
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_dir"; run=(runuser -u postgres --); fi
  "${run[@]}" "$bin/initdb" -D "$pg_dir/data" -A trust -U postgres >/dev/null
  "${run[@]}" "$bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
    -o "-p $port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  pg_stop=("${run[@]}" "$bin/pg_ctl" -D "$pg_dir/data" -m fast stop)
  export OPENTAB_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
  echo "started a PostgreSQL of our own on 127.0.0.1:$port"
}
stop_postgres() {
  if [ -n "${pg_dir:-}" ]; then "${pg_stop[@]}" >/dev/null 2>&1 || true; rm -rf "$pg_dir"; fi
}

# schemathesis (PyPI, pinned) in a virtualenv of the project's own, for the OpenAPI check.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  local venv="$PWD/.venv-tools"
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    if command -v apt-get >/dev/null && ! python3 -c 'import ensurepip' 2>/dev/null; then
      ensure_debian_packages python3 python3-venv
    fi
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  export OPENTAB_SCHEMATHESIS="$venv/bin/schemathesis"
}

# Starlette on uvicorn (PyPI, pinned) in the same virtualenv: one of the real upstreams the
# bypass corpus runs against behind `opentab proxy`. Exports OPENTAB_PYTHON.
STARLETTE_VERSION=1.10.0
UVICORN_VERSION=0.54.0
ensure_python_upstreams() {
  local venv="$PWD/.venv-tools"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  if ! "$venv/bin/python" -c "import starlette, uvicorn; assert starlette.__version__ == '$STARLETTE_VERSION'" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "starlette==$STARLETTE_VERSION" "uvicorn==$UVICORN_VERSION"
  fi
  export OPENTAB_PYTHON="$venv/bin/python"
}

# Redis for the counter-store tests: the one on 127.0.0.1:6379 when it answers, otherwise one
# of our own on a free port (Debian's redis-server, installed if missing), stopped at exit.
# Exports OPENTAB_TEST_REDIS; tests use a fresh key prefix each.
ensure_redis() {
  # The data-loss test starts a Redis of its own (to FLUSHALL it), so the binary is needed
  # even when a Redis answers on 6379.
  command -v redis-server >/dev/null || ensure_debian_packages redis-server
  if [ -n "${OPENTAB_TEST_REDIS:-}" ]; then return; fi
  if [ -z "${OPENTAB_OWN_REDIS:-}" ] && port_open 6379; then
    export OPENTAB_TEST_REDIS=redis://127.0.0.1:6379
    echo "using the Redis on 127.0.0.1:6379"
    return
  fi
  local port=56379
  while port_open "$port"; do port=$((port + 1)); done
  redis_dir=$(mktemp -d /tmp/opentab-redis.XXXXXX)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" \
    --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
  for _ in $(seq 50); do port_open "$port" && break; sleep 0.1; done
  redis_port=$port
  export OPENTAB_TEST_REDIS="redis://127.0.0.1:$port"
  echo "started a Redis of our own on 127.0.0.1:$port"
}
stop_redis() {
  if [ -n "${redis_dir:-}" ]; then
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$redis_dir/redis.pid")" 2>/dev/null || true
    rm -rf "$redis_dir"
  fi
}

# What the cluster topology runs itself (crates/topology, `opentab cluster`, `opentab chaos`):
# PostgreSQL's server binaries for a cluster of its own, redis-server and redis-cli for a
# Redis Cluster, iproute2 for the network-namespace fault. Installs only what is missing.
ensure_cluster_tools() {
  if command -v apt-get >/dev/null; then
    local pkgs=()
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs+=(postgresql)
    command -v redis-server >/dev/null || pkgs+=(redis-server)
    command -v redis-cli >/dev/null || pkgs+=(redis-tools)
    command -v ip >/dev/null || pkgs+=(iproute2)
    if [ ${#pkgs[@]} -gt 0 ]; then ensure_debian_packages "${pkgs[@]}"; fi
  fi
}

# cargo-mutants (crates.io, pinned), for the mutation check of the money rules.
CARGO_MUTANTS_VERSION=27.1.0
ensure_cargo_mutants() {
  if ! cargo mutants --version 2>/dev/null | grep -q "$CARGO_MUTANTS_VERSION"; then
    echo "installing cargo-mutants $CARGO_MUTANTS_VERSION (once per machine)"
    cargo install --locked --quiet cargo-mutants --version "$CARGO_MUTANTS_VERSION"
  fi
}

# cargo-fuzz (crates.io, pinned), for the libFuzzer targets in fuzz/ (scripts/fuzz.sh).
CARGO_FUZZ_VERSION=0.13.2
ensure_cargo_fuzz() {
  if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION (once per machine)"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
  fi
}
