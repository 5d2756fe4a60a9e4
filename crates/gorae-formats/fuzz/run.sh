#!/usr/bin/env bash
# Coverage-guided libFuzzer run of one target without cargo-fuzz or a nightly toolchain: builds
# with the sanitizer-coverage passes cargo-fuzz would add (RUSTC_BOOTSTRAP unlocks them on stable),
# with overflow checks on, seeds the corpus from the crate's own seed files, and runs.
#   usage: crates/gorae-formats/fuzz/run.sh gguf|safetensors [seconds]
set -euo pipefail
target=${1:?usage: run.sh gguf|safetensors [seconds]}
secs=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --bin "$target" --target "$triple"
mkdir -p "corpus/$target" "artifacts/$target"
GORAE_FUZZ_SEED_DIR="$here/corpus/$target" RUSTFLAGS= RUSTC_BOOTSTRAP= \
    cargo test --manifest-path ../Cargo.toml --test "fuzz_$target" -q >/dev/null
# -malloc_limit_mb flags any single allocation over 256 MiB: a forged count must never get one.
"target/$triple/release/$target" "corpus/$target" -max_total_time="$secs" -max_len=8192 \
    -rss_limit_mb=2048 -malloc_limit_mb=256 -artifact_prefix="artifacts/$target/" -print_final_stats=1
