#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (the command body and value parsers) for a bounded time,
# split evenly between them. Exits non-zero if a target finds a crash (a panic or a broken
# property), printing the reproducer's path; crashes are kept in fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz-targets.sh [SECONDS]      (default 60, all targets together)
#
# Works on a stable toolchain: cargo-fuzz needs nightly-only compiler flags (sanitizer coverage
# instrumentation), which RUSTC_BOOTSTRAP=1 allows on stable. Installs cargo-fuzz with
# `cargo install` when it is missing (once, into cargo's bin directory). Writes only under
# fuzz/: the build in fuzz/target, the corpus each run grows in fuzz/target/corpus (the
# committed seeds in fuzz/corpus are read, never written), logs in fuzz/target/logs.
#
# No sanitizer (`--sanitizer none`): the fuzzed code is safe Rust (`unsafe_code = "forbid"`),
# so AddressSanitizer would only watch the dependencies, and it doubles the cold build on the
# 2-core CI machine (about 3.5 min instead of 1.7). Panics, overflow (debug assertions are on)
# and failed properties are what these targets find.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

total=${1:-60}
case $total in
  '' | *[!0-9]*) echo "fuzz-targets.sh: SECONDS must be a whole number, not '$total'" >&2; exit 2 ;;
esac
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-targets.sh: installing cargo-fuzz $cargo_fuzz_version" >&2
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --quiet \
    --target-dir fuzz/target/cargo-fuzz-install
fi

export RUSTC_BOOTSTRAP=1
target_dir=fuzz/target
flags=(--release --debug-assertions --sanitizer none --target-dir "$target_dir")

# The fuzz crate is outside the workspace, so the fmt step does not see it; and it has its own
# lock file: refuse to run on one that no longer matches.
cargo fmt --manifest-path fuzz/Cargo.toml --check
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "fuzz-targets.sh: built in $((SECONDS - start))s"

mapfile -t targets < <(cargo fuzz list)
per=$((total / ${#targets[@]}))
[ "$per" -ge 1 ] || per=1
mkdir -p "$target_dir/logs"
failed=()
for t in "${targets[@]}"; do
  corpus=$target_dir/corpus/$t
  log=$target_dir/logs/$t.log
  mkdir -p "$corpus"
  echo "fuzz-targets.sh: $t for ${per}s"
  # New inputs go to the first corpus directory (ours, under target); the seeds are only read.
  if cargo fuzz run "${flags[@]}" "$t" "$corpus" "fuzz/corpus/$t" -- \
    -max_total_time="$per" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" || tail -n 1 "$log"
  else
    grep -A 2 'panicked at' "$log" || tail -n 40 "$log"
    echo "fuzz-targets.sh: $t FAILED (full log: $log)" >&2
    grep -Eo '(Test unit written to|Failing input:)[[:space:]]*[^[:space:]]+' "$log" >&2 || true
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz-targets.sh: crashes in ${failed[*]}; reproduce one with" >&2
  echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} <target> <reproducer>" >&2
  exit 1
fi
echo "fuzz-targets.sh: ${#targets[@]} targets, no crash in ${total}s"
