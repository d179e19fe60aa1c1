#!/usr/bin/env bash
# Builds the Debian package: target/package/vigil_<version>-1_<arch>.deb, with the binary,
# the systemd unit, a commented default /etc/vigil/vigil.toml, a man page per command, the
# shell completions (bash, zsh, fish) and the plugin header.
#
#   bash scripts/package.sh            # release build
#   PROFILE=dev bash scripts/package.sh  # the debug build (the package test uses it)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --version 3.8.0
cargo build --profile "$profile" -p vigil
rm -rf target/package
"target/$dir/vigil" gen-docs target/package
gzip -9n target/package/man/*.1
cargo deb -p vigil --no-build --profile "$profile" --no-strip -o target/package/ >&2
ls target/package/*.deb
