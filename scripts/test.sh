#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, checks formatting and
# lints, then runs every test. Safe to run on a fresh machine, as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: python3, sh, sleep, mkfifo, cc (a fresh machine has them),
# iproute2's `ip` for the partition tests (network namespaces; these need root, as CI is),
# nftables' `nft` for the chaos suite's partial cuts, and resource-agents for the OCF tests
# (its agents under /usr/lib/ocf).
# systemd's `systemd-analyze` checks the packaged unit, util-linux's `choom` sets the OOM
# score the unit gives the agent, dpkg installs the package (the package test).
declare -A pkg=([python3]=python3 [sh]=dash [sleep]=coreutils [mkfifo]=coreutils [ip]=iproute2 [cc]=gcc [nft]=nftables [systemd-analyze]=systemd [choom]=util-linux [dpkg]=dpkg)
need=()
for cmd in "${!pkg[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("${pkg[$cmd]}")
done
[ -x /usr/lib/ocf/resource.d/heartbeat/IPaddr2 ] || need+=(resource-agents)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -q && apt-get install -y -q "${need[@]}"
fi
# QEMU for the VM tests. Bookworm's own qemu-system-x86 conflicts with the qemu-utils these
# machines have from bookworm-backports, so it comes from backports too, through a private
# sources list (the machine's apt configuration is left alone).
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  echo "installing: qemu-system-x86 (bookworm-backports)" >&2
  uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  list=$(mktemp)
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-backports main\n' \
    "${uri:-http://deb.debian.org/debian}" "${uri:-http://deb.debian.org/debian}" "${uri:-http://deb.debian.org/debian}" >"$list"
  apt_private=(-o Dir::Etc::SourceList="$list" -o Dir::Etc::SourceParts=/dev/null)
  apt-get -q "${apt_private[@]}" update
  apt-get install -y -q --no-install-recommends "${apt_private[@]}" -t bookworm-backports qemu-system-x86
  rm -f "$list"
fi

# The Linux test guest of the VM tests: a Debian kernel and busybox, downloaded, not installed.
if ! python3 scripts/make-test-guest.py --current target/test-guest; then
  apt-cache show busybox-static >/dev/null 2>&1 || apt-get update -q
  python3 scripts/make-test-guest.py target/test-guest
fi

# cargo-deb builds the package for the package test (scripts/package.sh).
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --version 3.8.0

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo test --workspace 2>&1 | tee "$out"
# One closing line for the whole run (cargo's last line is a doc-test binary's, often 0 tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
