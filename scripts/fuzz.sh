#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/README.md): one instrumented build of them all, then each for
# OPENTAB_FUZZ_SECS seconds (default 60) from its committed seeds in fuzz/corpus/<target>/.
# Inputs found on the way go to a scratch directory, so the checkout stays as it was. A crash (a
# panic, a failed property, a hang over 10 s) fails the run; its input is kept in
# fuzz/artifacts/<target>/ and the command that replays it is printed.
# Usage: scripts/fuzz.sh [target...]   (every target by default; `cargo fuzz list` names them)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

secs=${OPENTAB_FUZZ_SECS:-60}
ensure_cargo_fuzz

# The targets' own lockfile must be current, as --locked demands of the workspace.
if ! cargo tree --locked --quiet --manifest-path fuzz/Cargo.toml >/dev/null; then
  echo "fuzz/Cargo.lock is stale: run 'cargo tree --manifest-path fuzz/Cargo.toml >/dev/null' and commit it" >&2
  exit 1
fi

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

# Stable rustc is enough: without a sanitizer cargo-fuzz passes no -Z flag. The code under test
# is safe Rust, so libFuzzer's coverage guidance plus debug assertions and overflow checks (on,
# in an optimised build) is what finds its bugs; AddressSanitizer would only slow it down.
# fuzz/target is set explicitly so that a CARGO_TARGET_DIR shared with the workspace is neither
# used nor invalidated by the instrumented build.
build=(--sanitizer none --debug-assertions --target-dir fuzz/target)
if [ ${#targets[@]} = 1 ]; then
  cargo fuzz build "${build[@]}" "${targets[0]}"
else
  cargo fuzz build "${build[@]}"
fi
bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"

scratch=$(mktemp -d /tmp/opentab-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
  log="$scratch/$target.log"
  printf '\n%s: fuzzing for %ss\n' "$target" "$secs"
  status=0
  "$bin_dir/$target" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" "$scratch/$target" "fuzz/corpus/$target" >"$log" 2>&1 || status=$?
  # libFuzzer's own figures: executions, their rate, coverage reached, inputs found.
  grep -E '^Done [0-9]+ runs' "$log" || true
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" | sed 's/^/  /' || true
  if [ "$status" != 0 ]; then
    failed+=("$target")
    echo "--- $target FAILED (libFuzzer exit $status):" >&2
    # The panic (the property that failed) or libFuzzer's own finding (a timeout, out of memory).
    { sed -n '/ panicked at /,/^stack backtrace:/p' "$log" | grep -v '^stack backtrace:' | head -n 30
      grep -E '^==[0-9]+== ERROR: libFuzzer|^SUMMARY: libFuzzer' "$log"; } >&2 || true
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [ -n "$artifact" ]; then
      echo "--- the input is $artifact; replay it with:" >&2
      echo "    $bin_dir/$target $artifact" >&2
    fi
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "no crash in ${#targets[@]} target(s), ${secs}s each"
