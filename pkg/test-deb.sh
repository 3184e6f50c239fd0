#!/usr/bin/env bash
# Builds the Debian package, installs it with apt-get on this machine, checks
# what it put where, runs `walhook --version`, `walhook check` (as the
# walhook user, reading the installed /etc/walhook/walhook.toml),
# `walhook setup` and `walhook teardown` against a throwaway PostgreSQL,
# then purges the package and checks that none of its files is left.
#
# Usage: pkg/test-deb.sh [PACKAGE.deb]   (as root, on Debian or Ubuntu)
# Without an argument it builds the package with pkg/build-deb.sh.
# It refuses to run where walhook is already installed: it would purge it.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "test-deb: FAIL: $*" >&2
    exit 1
}
step() { echo "test-deb: $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (apt-get install, runuser)"
command -v apt-get >/dev/null || fail "needs apt-get (Debian or Ubuntu)"
if dpkg-query -W -f='${Status}' walhook 2>/dev/null | grep -q installed; then
    fail "walhook is already installed here; this test would purge it"
fi

if [ $# -ge 1 ]; then
    deb="$1"
else
    deb="$(pkg/build-deb.sh | tail -n 1)"
fi
[ -f "$deb" ] || fail "no package at '$deb'"
deb="$(realpath "$deb")"
version="$(dpkg-deb -f "$deb" Version)"
upstream_version="${version%-*}"

work="$(mktemp -d)"
# postgres and walhook must reach the data directory and the socket in it.
chmod 0755 "$work"
pg_data="$work/data"
pg_socket="$work/socket"
pg_ctl=""
cleanup() {
    if [ -n "$pg_ctl" ] && [ -f "$pg_data/postmaster.pid" ]; then
        runuser -u postgres -- "$pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    # A failed run must not leave the package behind either.
    if dpkg-query -W -f='${Status}' walhook 2>/dev/null | grep -q installed; then
        apt-get purge -y -qq walhook >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step "installing $deb"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >"$work/apt-install.log" 2>&1 ||
    { cat "$work/apt-install.log" >&2; fail "apt-get install $deb"; }
dpkg-query -L walhook | sort >"$work/files"

step "binary, user, config"
[ "$(command -v walhook)" = /usr/bin/walhook ] || fail "walhook is not /usr/bin/walhook on PATH"
got="$(walhook --version)"
[ "$got" = "walhook $upstream_version" ] || fail "walhook --version said '$got', package is $version"
# A panic's backtrace names functions only with the symbol table.
[ "$(nm /usr/bin/walhook 2>/dev/null | grep -c ' T ')" -gt 0 ] || fail "/usr/bin/walhook has no symbol table"
getent passwd walhook >/dev/null || fail "no walhook user after install"
[ "$(getent passwd walhook | cut -d: -f7)" = /usr/sbin/nologin ] || fail "walhook user has a login shell"
[ "$(stat -c '%a %U:%G' /etc/walhook)" = "750 root:walhook" ] ||
    fail "/etc/walhook is $(stat -c '%a %U:%G' /etc/walhook), not 750 root:walhook"
[ "$(stat -c '%a %U:%G' /etc/walhook/walhook.toml)" = "640 root:walhook" ] ||
    fail "walhook.toml is $(stat -c '%a %U:%G' /etc/walhook/walhook.toml), not 640 root:walhook"
dpkg-query -W -f='${Conffiles}\n' walhook | grep -q ' /etc/walhook/walhook.toml ' ||
    fail "/etc/walhook/walhook.toml is not a conffile"
cmp -s /etc/walhook/walhook.toml systemd/walhook.toml || fail "installed walhook.toml differs from systemd/walhook.toml"

step "unit, sysusers, tmpfiles, man pages, completions"
unit=/usr/lib/systemd/system/walhook.service
[ -f "$unit" ] || fail "no $unit"
exec_start="$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")"
[ -x "$exec_start" ] || fail "the unit's ExecStart ($exec_start) is not an installed executable"
template=/usr/lib/systemd/system/walhook@.service
[ -f "$template" ] || fail "no $template"
grep -qx 'ExecStart=/usr/bin/walhook -c /etc/walhook/%i.toml run' "$template" ||
    fail "$template does not run /etc/walhook/%i.toml"
# Only the description, ExecStart and the instance's name may differ.
if diff <(grep -v '^#' "$unit") <(grep -v '^#' "$template") | grep '^[<>]' |
    grep -Ev '^[<>] (Description|ExecStart|Environment=WALHOOK_INSTANCE)='; then
    fail "$template differs from $unit in more than Description, ExecStart and Environment"
fi
[ -f /usr/lib/sysusers.d/walhook.conf ] || fail "no sysusers snippet"
[ -f /usr/lib/tmpfiles.d/walhook.conf ] || fail "no tmpfiles snippet"
if systemctl is-enabled walhook >/dev/null 2>&1; then
    fail "the package enabled walhook.service before it is configured"
fi
man_page="$(man -w walhook 2>/dev/null || true)"
[ "$man_page" = /usr/share/man/man1/walhook.1.gz ] || fail "man -w walhook found '$man_page'"
zcat "$man_page" | grep -q '^\.SH "\?EXIT STATUS' || fail "walhook(1) has no EXIT STATUS section"
[ -f /usr/share/man/man1/walhook-setup.1.gz ] || fail "no walhook-setup(1)"
bash -c 'source /usr/share/bash-completion/completions/walhook && complete -p walhook' >/dev/null ||
    fail "the bash completion does not register for walhook"
[ -f /usr/share/zsh/vendor-completions/_walhook ] || fail "no zsh completion"
# The alert rules, tested where they are installed when promtool is there.
cmp -s /usr/share/walhook/walhook-alerts.yml monitoring/walhook-alerts.yml ||
    fail "/usr/share/walhook/walhook-alerts.yml is missing or differs from monitoring/"
cmp -s /usr/share/walhook/walhook-dashboard.json monitoring/walhook-dashboard.json ||
    fail "/usr/share/walhook/walhook-dashboard.json is missing or differs from monitoring/"
if command -v promtool >/dev/null 2>&1; then
    promtool test rules /usr/share/walhook/walhook-alerts.test.yml >/dev/null ||
        fail "promtool test rules fails on the installed alert rules"
fi
[ -f /usr/share/fish/vendor_completions.d/walhook.fish ] || fail "no fish completion"

step "a throwaway PostgreSQL for check, setup and teardown"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[ -x "$pg_bin/initdb" ] || fail "no PostgreSQL server binaries (apt-get install postgresql)"
pg_ctl="$pg_bin/pg_ctl"
install -d -o postgres -m 0700 "$pg_data"
# The walhook user reaches the server through this socket only.
install -d -o postgres -m 0755 "$pg_socket"
install -d -o postgres -m 0755 "$work/server"
runuser -u postgres -- "$pg_bin/initdb" -D "$pg_data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
    --no-sync >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; fail initdb; }
runuser -u postgres -- "$pg_ctl" -D "$pg_data" -w -l "$work/server/postgres.log" \
    -o "-c listen_addresses='' -k $pg_socket -c wal_level=logical -c fsync=off" start >/dev/null ||
    { cat "$work/server/postgres.log" >&2; fail "starting PostgreSQL"; }

# What the README asks a DBA to do first: name the database in the
# installed config file.
sed -i "s|^url = .*|url = \"host=$pg_socket user=postgres dbname=postgres\"|" /etc/walhook/walhook.toml

run_logged() {
    local name="$1"
    shift
    if ! "$@" >"$work/$name.out" 2>&1; then
        cat "$work/$name.out" >&2
        fail "$name exited non-zero"
    fi
}
# As the daemon's user, with no -c: the installed default path.
run_logged check-before-setup runuser -u walhook -- walhook check
grep -q '^NEXT .*walhook setup' "$work/check-before-setup.out" ||
    { cat "$work/check-before-setup.out" >&2; fail "check before setup did not name setup as the next step"; }
sed 's/^/    /' "$work/check-before-setup.out"
run_logged setup walhook setup
run_logged check-after-setup runuser -u walhook -- walhook check
if grep -q '^NEXT ' "$work/check-after-setup.out"; then
    cat "$work/check-after-setup.out" >&2
    fail "check after setup still names a next step"
fi
sed 's/^/    /' "$work/check-after-setup.out"
# As walhook@walhook.service would: the instance's name picks its config.
run_logged check-as-instance runuser -u walhook -- env WALHOOK_INSTANCE=walhook walhook check
[ "$(head -n 1 "$work/check-as-instance.out")" = "instance walhook (/etc/walhook/walhook.toml)" ] ||
    { cat "$work/check-as-instance.out" >&2; fail "check with WALHOOK_INSTANCE did not name the instance first"; }
run_logged teardown walhook teardown --drop-schema --yes
slots="$(runuser -u postgres -- "$pg_bin/psql" -h "$pg_socket" -At -c 'SELECT count(*) FROM pg_replication_slots')"
[ "$slots" = 0 ] || fail "teardown left $slots replication slot(s)"

step "reinstalling keeps the edited config and its modes"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall "$deb" >"$work/apt-reinstall.log" 2>&1 ||
    { cat "$work/apt-reinstall.log" >&2; fail "apt-get install --reinstall $deb"; }
grep -q "^url = \"host=$pg_socket " /etc/walhook/walhook.toml || fail "reinstalling replaced the edited walhook.toml"
[ "$(stat -c '%a %U:%G' /etc/walhook/walhook.toml)" = "640 root:walhook" ] ||
    fail "after reinstalling walhook.toml is $(stat -c '%a %U:%G' /etc/walhook/walhook.toml)"
# The daemon's user still reads it.
run_logged check-after-reinstall runuser -u walhook -- walhook check

step "purging"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq walhook >"$work/apt-purge.log" 2>&1 ||
    { cat "$work/apt-purge.log" >&2; fail "apt-get purge walhook"; }
if dpkg-query -W -f='${Status}' walhook 2>/dev/null | grep -q installed; then
    fail "walhook still installed after purge"
fi
left=""
while read -r path; do
    # Directories the package shares with others (/usr, /usr/share/man, ...)
    # stay; every file and every directory of its own goes.
    if [ -e "$path" ] && { [ ! -d "$path" ] || [[ "$path" == */walhook ]]; }; then
        left="$left $path"
    fi
done <"$work/files"
[ -z "$left" ] || fail "left after purge:$left"
[ ! -e /etc/walhook ] || fail "/etc/walhook left after purge"

step "OK: installed, checked, set up, torn down and purged $deb"
echo "test-deb: the walhook system user stays, as Debian leaves system users on purge"
