#!/usr/bin/env bash
# Builds the RPM target/generate-rpm/walhook-<version>-1.<arch>.rpm (RHEL,
# Rocky, Alma, Fedora) and prints its path on the last line.
#
# The same build step as pkg/build-deb.sh (the binary, then its man pages
# and shell completions from `walhook package-files`), then %pre is written
# from systemd/walhook.sysusers, and `cargo generate-rpm` packs what
# Cargo.toml's [package.metadata.generate-rpm] lists. No spec file and no
# rpmbuild: it runs on Debian as well.
#
# Needs cargo-generate-rpm: `cargo install cargo-generate-rpm --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo generate-rpm --version >/dev/null 2>&1; then
    echo "build-rpm: cargo-generate-rpm is missing; install it with: cargo install cargo-generate-rpm --locked" >&2
    exit 1
fi

cargo build --release --package walhook --bin walhook
target_dir="${CARGO_TARGET_DIR:-target}"
files=target/package-files
rm -rf "$files"
"$target_dir/release/walhook" package-files "$files" >/dev/null
gzip -9n "$files"/man/man1/*.1

# %pre creates the user from the very lines systemd-sysusers reads later.
mkdir -p "$files/rpm"
sysusers="$(grep -v '^#' systemd/walhook.sysusers | grep -v '^[[:space:]]*$')"
awk -v lines="$sysusers" '$0 == "@SYSUSERS@" { print lines; next } { print }' \
    pkg/rpm/pre.sh.in >"$files/rpm/pre.sh"

# The release binary is not stripped further: it keeps its symbol table on
# purpose, so a backtrace names its functions (see [profile.release]).
out=target/generate-rpm
rm -f "$out"/walhook-*.rpm
# The root package: --package would look for a walhook/ directory.
cargo generate-rpm --target-dir "$target_dir" >&2
ls "$out"/walhook-*.rpm
