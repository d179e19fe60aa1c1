#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, checks formatting and
# lints, then runs every test. Safe to run on a fresh machine, as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use. The core-node tests need only sh, sleep and python3, which
# a fresh machine has; later suites add theirs here.
need=()
for cmd in python3 sh sleep; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "missing: ${need[*]}; installing" >&2
  apt-get update -q && apt-get install -y -q python3 coreutils dash
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
