#!/usr/bin/env bash
# Builds the Debian package target/debian/walhook_<version>-1_<arch>.deb and
# prints its path on the last line.
#
# cargo-deb cannot run a step of its own before packing, so this script
# builds the binary, lets it write its man pages and shell completions from
# its own command-line definition (`walhook package-files`, hidden) into
# target/package-files, compresses the pages as Debian expects, and then
# runs `cargo deb --no-build`, which packs what Cargo.toml's
# [package.metadata.deb] lists.
#
# Needs cargo-deb: `cargo install cargo-deb --locked` (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: cargo-deb is missing; install it with: cargo install cargo-deb --locked" >&2
    exit 1
fi

cargo build --release --package walhook --bin walhook
target_dir="${CARGO_TARGET_DIR:-target}"
files=target/package-files
rm -rf "$files"
"$target_dir/release/walhook" package-files "$files" >/dev/null
gzip -9n "$files"/man/man1/*.1

# --no-strip: the release profile already leaves out the debug info but
# keeps the symbol table on purpose, so a backtrace names its functions.
# cargo deb prints the path of the package it wrote.
cargo deb --no-build --no-strip --package walhook --quiet
