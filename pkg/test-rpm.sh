#!/usr/bin/env bash
# Builds the RPM, inspects it (its files with owners and modes, its
# scriptlets, its requirements), runs rpmlint on it, and installs it into a
# throwaway root to run `walhook --version` from there. Runs on Debian or
# Ubuntu, the machine being left as it was: nothing is installed on it.
#
# Usage: pkg/test-rpm.sh [PACKAGE.rpm]   (as root: rpm --root chowns the
# files to root:walhook)
# Without an argument it builds the package with pkg/build-rpm.sh.
# Needs rpm and rpmlint: apt-get install -y rpm rpmlint
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "test-rpm: FAIL: $*" >&2
    exit 1
}
step() { echo "test-rpm: $*"; }

for tool in rpm rpmlint; do
    command -v "$tool" >/dev/null || fail "$tool is missing; install it with: apt-get install -y rpm rpmlint"
done
[ "$(id -u)" = 0 ] || fail "run as root (rpm --root installs files owned by root)"

if [ $# -ge 1 ]; then
    package="$1"
else
    package="$(pkg/build-rpm.sh | tail -n 1)"
fi
[ -f "$package" ] || fail "no package at '$package'"
package="$(realpath "$package")"
version="$(rpm -qp --qf '%{VERSION}' "$package" 2>/dev/null)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step "files, owners and modes (rpm -qlpv)"
rpm -qlpv "$package" 2>/dev/null | tee "$work/files" | sed 's/^/    /'
# "MODE OWNER GROUP PATH" for each file the .deb ships as well.
has() {
    awk -v mode="$1" -v user="$2" -v group="$3" -v path="$4" \
        '$1 == mode && $3 == user && $4 == group && $NF == path { found = 1 } END { exit !found }' \
        "$work/files" || fail "not in the package as $1 $2 $3: $4"
}
has -rwxr-xr-x root root /usr/bin/walhook
has -rw-r----- root walhook /etc/walhook/walhook.toml
has -rw-r--r-- root root /usr/lib/systemd/system/walhook.service
has -rw-r--r-- root root /usr/lib/systemd/system/walhook@.service
has -rw-r--r-- root root /usr/lib/sysusers.d/walhook.conf
has -rw-r--r-- root root /usr/lib/tmpfiles.d/walhook.conf
has -rw-r--r-- root root /usr/share/doc/walhook/README.md
has -rw-r--r-- root root /usr/share/walhook/walhook-alerts.yml
has -rw-r--r-- root root /usr/share/walhook/walhook-alerts.test.yml
has -rw-r--r-- root root /usr/share/walhook/walhook-dashboard.json
has -rw-r--r-- root root /usr/share/man/man1/walhook.1.gz
has -rw-r--r-- root root /usr/share/man/man1/walhook-setup.1.gz
has -rw-r--r-- root root /usr/share/bash-completion/completions/walhook
has -rw-r--r-- root root /usr/share/zsh/site-functions/_walhook
has -rw-r--r-- root root /usr/share/fish/vendor_completions.d/walhook.fish
# %config(noreplace): an edited config survives an upgrade.
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$package" 2>/dev/null |
    grep -qx 'cn /etc/walhook/walhook.toml' || fail "/etc/walhook/walhook.toml is not %config(noreplace)"
[ "$(rpm -qpd "$package" 2>/dev/null | grep -c '^/usr/share/doc/walhook/README.md$')" = 1 ] ||
    fail "README.md is not %doc"

step "scriptlets (rpm -qp --scripts)"
rpm -qp --scripts "$package" 2>/dev/null | tee "$work/scripts" | sed 's/^/    /'
for tag in PREIN POSTIN PREUN POSTUN; do
    rpm -qp --qf "%{$tag}" "$package" >"$work/$tag.sh" 2>/dev/null
    sh -n "$work/$tag.sh" || fail "the $tag scriptlet is not valid sh"
done
grep -qxF "$(grep -v '^#' systemd/walhook.sysusers)" "$work/PREIN.sh" ||
    fail "%pre does not carry systemd/walhook.sysusers' line"
# What the .deb does: nothing enabled or started on install; on upgrade
# only what runs is restarted; the user stays on erase.
if grep -Eq 'systemctl[^|;]* (enable|start|preset|restart)( |$)' "$work/scripts"; then
    fail "a scriptlet enables, starts or restarts unconditionally"
fi
grep -q "try-restart walhook.service 'walhook@\*.service'" "$work/POSTUN.sh" ||
    fail "%postun does not try-restart the service and its instances on upgrade"
if grep -Eq 'userdel|groupdel' "$work/scripts"; then
    fail "a scriptlet removes the walhook user"
fi

step "requirements (rpm -qp --requires)"
rpm -qp --requires "$package" 2>/dev/null | tee "$work/requires" | sed 's/^/    /'
grep -qx '/usr/bin/systemd-sysusers' "$work/requires" || fail "does not require systemd-sysusers"

step "rpmlint (pkg/rpm/rpmlint.toml explains each finding it filters)"
rpmlint -c pkg/rpm/rpmlint.toml "$package" >"$work/rpmlint" 2>&1 || true
sed 's/^/    /' "$work/rpmlint"
grep -q ' 0 errors, 0 warnings' "$work/rpmlint" || fail "rpmlint found something: fix it, or filter it in pkg/rpm/rpmlint.toml saying why"

step "installing into a throwaway root"
root="$work/root"
mkdir -p "$root"
# --noscripts: rpm runs scriptlets chrooted into the root, which has no
# /bin/sh, systemd-sysusers or systemctl (they are checked above with
# sh -n instead). --nodeps: the root has no libc or systemd either; the
# binary runs against the host's. Without the walhook group there, rpm
# says it uses root for the config.
rpm --root "$root" --nodeps --noscripts -i "$package" 2>"$work/rpm-install.log" ||
    { cat "$work/rpm-install.log" >&2; fail "rpm --root $root -i $package"; }
rpm --root "$root" -q walhook >/dev/null || fail "rpm's database in the root does not list walhook"
rpm --root "$root" -V --nodeps walhook >"$work/verify" 2>&1 || {
    # The only expected difference: the config's group (no walhook group in the root).
    if grep -v '^......G..  c /etc/walhook/walhook.toml$' "$work/verify" | grep -q .; then
        cat "$work/verify" >&2
        fail "rpm -V walhook in the root"
    fi
}
got="$("$root/usr/bin/walhook" --version)"
[ "$got" = "walhook $version" ] || fail "walhook --version said '$got', package is $version"
echo "    $got"
cmp -s "$root/etc/walhook/walhook.toml" systemd/walhook.toml || fail "installed walhook.toml differs from systemd/walhook.toml"
rpm --root "$root" --nodeps --noscripts -e walhook 2>"$work/rpm-erase.log" ||
    { cat "$work/rpm-erase.log" >&2; fail "rpm --root $root -e walhook"; }
[ ! -e "$root/usr/bin/walhook" ] || fail "erasing left /usr/bin/walhook"

step "OK: $package"
