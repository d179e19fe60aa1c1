#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, checks formatting and
# lints, then runs every test. Safe to run on a fresh machine, as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: python3, sh, sleep, mkfifo, cc (a fresh machine has them),
# iproute2's `ip` for the partition tests (network namespaces; these need root, as CI is),
# and resource-agents for the OCF tests (its agents under /usr/lib/ocf).
declare -A pkg=([python3]=python3 [sh]=dash [sleep]=coreutils [mkfifo]=coreutils [ip]=iproute2 [cc]=gcc)
need=()
for cmd in "${!pkg[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("${pkg[$cmd]}")
done
[ -x /usr/lib/ocf/resource.d/heartbeat/IPaddr2 ] || need+=(resource-agents)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -q && apt-get install -y -q "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo test --workspace 2>&1 | tee "$out"
# One closing line for the whole run (cargo's last line is a doc-test binary's, often 0 tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
