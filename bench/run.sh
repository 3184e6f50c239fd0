#!/usr/bin/env bash
# walhook benchmark with fixed workloads. See bench/README.md.
#
#   bench/run.sh                          # every section, one summary table (~10 min)
#   SECTIONS=nginx bench/run.sh           # the delivery run alone (100,000 + 50,000)
#   SMOKE=1 bench/run.sh                  # every section at a tiny size (a quick check)
#
# SECTIONS (comma-separated, default all, in this order):
#   decode   no hook: walhook decoding DECODE_ROWS + DECODE_UPDATES changes vs pg_recvlogical
#   nginx    delivery of ROWS + UPDATES changes to nginx (http, and https with HTTPS=1)
#   wrk      wrk POSTing a walhook-sized body to the same nginx (the HTTP ceiling), and
#            the same POSTs from walhook's HTTP client stack alone (walhook-post)
#   slow     one hook whose target answers after SLOW_DELAY_MS, SLOW_ROWS rows in one transaction
#   latency  commit -> receipt latency at LATENCY_RATE single-row transactions/s
#   parked   the healthy hook with PARKED_HOOKS extra hooks in state 3, bytes per parked
#            event, and replaying REPLAY_EVENTS parked events
#   crash    a steady load while walhook is killed and PostgreSQL restarted; every change counted
#
# Knobs (environment): ROWS (default 100000), UPDATES (default 50000, at most
# ROWS), CONCURRENCY (delivery.concurrency_per_webhook: "adaptive", the default, or a number),
# SKIP_BUILD=1 (use the existing target/release/walhook), WALHOOK_BIN (another
# walhook binary to measure, e.g. an older build, side by side), KEEP_TMP=1 (keep
# the temp dir with all logs), WALHOOK_TIMEOUT (seconds, default 900),
# RECVLOGICAL_TIMEOUT (seconds, default 600), DELIVERY_EXTRA (raw TOML lines
# added to walhook's [delivery] table, e.g. DELIVERY_EXTRA='max_in_flight_bytes = 1048576'),
# HTTPS (default 1: also deliver the same changes to nginx over TLS, with a
# second walhook installation; 0: plain http only).
#
#   HOOKS=compare bench/run.sh   # the cost of matching: no hook, 10,000 hooks none
#                                # matching, 10,000 + 1 matching, 1 hook, side by side
#   HOOKS=fanout ROWS=300 UPDATES=0 bench/run.sh
#                                # 1,000 hooks all matching: every change sent 1,000 times
#
# HOOK_COUNT (default 10000) is the size of the large tables of `compare`,
# FANOUT_HOOKS (default 1000) the number of hooks of `fanout`.
set -euo pipefail

SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
    # Tiny sizes: every section runs in seconds and proves it can measure.
    : "${ROWS:=2000}" "${UPDATES:=1000}" "${DECODE_ROWS:=4000}" "${DECODE_UPDATES:=2000}"
    : "${WRK_SECONDS:=2}" "${SLOW_ROWS:=200}" "${LATENCY_SECONDS:=3}" "${LATENCY_RATE:=200}"
    : "${PARKED_ROWS:=1000}" "${PARKED_LAT_SECONDS:=2}" "${REPLAY_EVENTS:=2000}"
    : "${CRASH_RATE:=200}" "${CRASH_KILLS:=3}" "${CRASH_INTERVAL:=1}"
fi
ROWS=${ROWS:-100000}
UPDATES=${UPDATES:-50000}
CONCURRENCY=${CONCURRENCY:-adaptive}
WALHOOK_TIMEOUT=${WALHOOK_TIMEOUT:-900}
RECVLOGICAL_TIMEOUT=${RECVLOGICAL_TIMEOUT:-600}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
HTTPS=${HTTPS:-1}
HOOKS=${HOOKS:-}
HOOK_COUNT=${HOOK_COUNT:-10000}
FANOUT_HOOKS=${FANOUT_HOOKS:-1000}
ALL_SECTIONS=decode,nginx,wrk,slow,latency,parked,crash
SECTIONS=${SECTIONS:-$ALL_SECTIONS}
# decode: 600,000 changes by default (the size the issue asks for).
DECODE_ROWS=${DECODE_ROWS:-400000}
DECODE_UPDATES=${DECODE_UPDATES:-200000}
# wrk: POSTs of a walhook-sized body to nginx, WRK_CONNECTIONS kept alive.
WRK_SECONDS=${WRK_SECONDS:-10}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-8}
# ...and the same POSTs from walhook's HTTP client stack alone (walhook-post),
# POST_CONCURRENCY requests in flight.
POST_CONCURRENCY=${POST_CONCURRENCY:-128}
# slow: one hook whose target answers every request after SLOW_DELAY_MS.
SLOW_ROWS=${SLOW_ROWS:-5000}
SLOW_DELAY_MS=${SLOW_DELAY_MS:-50}
# latency: single-row transactions at a steady rate.
LATENCY_RATE=${LATENCY_RATE:-1000}
LATENCY_SECONDS=${LATENCY_SECONDS:-20}
# parked: the healthy hook beside 0, 1 and 10 hooks in state 3.
PARKED_HOOKS=${PARKED_HOOKS:-0 1 10}
PARKED_ROWS=${PARKED_ROWS:-20000}
PARKED_LAT_SECONDS=${PARKED_LAT_SECONDS:-10}
REPLAY_EVENTS=${REPLAY_EVENTS:-100000}
# crash: a steady load while walhook is killed CRASH_KILLS times per phase.
CRASH_RATE=${CRASH_RATE:-700}
CRASH_KILLS=${CRASH_KILLS:-10}
CRASH_INTERVAL=${CRASH_INTERVAL:-3}
CRASH_DRAIN_TIMEOUT=${CRASH_DRAIN_TIMEOUT:-300}
# The sink (slow, latency, parked, crash) over https (1) or plain http (0).
SINK_TLS=${SINK_TLS:-0}

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[bench] FAILED: %s\n' "$*" >&2; exit 1; }

[[ -z $HOOKS || $HOOKS == compare || $HOOKS == fanout ]] \
    || die "HOOKS must be empty, 'compare' or 'fanout' (got '$HOOKS')"
for v in ROWS UPDATES WALHOOK_TIMEOUT RECVLOGICAL_TIMEOUT HTTPS HOOK_COUNT FANOUT_HOOKS \
         DECODE_ROWS DECODE_UPDATES WRK_SECONDS WRK_CONNECTIONS POST_CONCURRENCY SLOW_ROWS SLOW_DELAY_MS \
         LATENCY_RATE LATENCY_SECONDS PARKED_ROWS PARKED_LAT_SECONDS REPLAY_EVENTS \
         CRASH_RATE CRASH_KILLS CRASH_INTERVAL CRASH_DRAIN_TIMEOUT SINK_TLS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
(( ROWS >= 1 )) || die "ROWS must be at least 1"
(( UPDATES <= ROWS )) || die "UPDATES ($UPDATES) must not exceed ROWS ($ROWS)"
[[ $CONCURRENCY == adaptive || $CONCURRENCY =~ ^[1-9][0-9]*$ ]] \
    || die "CONCURRENCY must be 'adaptive' or a number of at least 1 (got '$CONCURRENCY')"
# The value as TOML, and the most requests one hook may have in flight
# (walhook's default ceiling when adaptive).
if [[ $CONCURRENCY == adaptive ]]; then
    CONCURRENCY_TOML='"adaptive"'; CONCURRENCY_MAX=512
else
    CONCURRENCY_TOML=$CONCURRENCY; CONCURRENCY_MAX=$CONCURRENCY
fi
(( BASH_VERSINFO[0] >= 5 )) || die "bash 5 or newer is needed (EPOCHREALTIME)"
(( DECODE_ROWS >= 1 && DECODE_UPDATES <= DECODE_ROWS )) \
    || die "DECODE_ROWS must be at least 1 and DECODE_UPDATES ($DECODE_UPDATES) at most DECODE_ROWS ($DECODE_ROWS)"
(( WRK_SECONDS >= 1 && WRK_CONNECTIONS >= 1 )) || die "WRK_SECONDS and WRK_CONNECTIONS must be at least 1"
(( POST_CONCURRENCY >= 1 && POST_CONCURRENCY <= 4096 )) || die "POST_CONCURRENCY must be from 1 to 4096"
(( SLOW_ROWS >= 1 && SLOW_DELAY_MS <= 60000 )) || die "SLOW_ROWS must be at least 1 and SLOW_DELAY_MS at most 60000"
(( LATENCY_RATE >= 1 && LATENCY_SECONDS >= 1 )) || die "LATENCY_RATE and LATENCY_SECONDS must be at least 1"
(( PARKED_ROWS >= 1 && PARKED_LAT_SECONDS >= 1 && REPLAY_EVENTS >= 1 )) \
    || die "PARKED_ROWS, PARKED_LAT_SECONDS and REPLAY_EVENTS must be at least 1"
for k in $PARKED_HOOKS; do
    [[ $k =~ ^[0-9]+$ ]] && (( k <= 1000 )) || die "PARKED_HOOKS must list numbers of hooks from 0 to 1000 (got '$k')"
done
(( CRASH_RATE >= 1 && CRASH_KILLS >= 1 && CRASH_INTERVAL >= 1 )) \
    || die "CRASH_RATE, CRASH_KILLS and CRASH_INTERVAL must be at least 1"
(( SINK_TLS <= 1 )) || die "SINK_TLS must be 0 or 1"
IFS=, read -r -a SECTION_LIST <<<"$SECTIONS"
for sec in "${SECTION_LIST[@]}"; do
    [[ ,$ALL_SECTIONS, == *",$sec,"* ]] || die "SECTIONS: unknown section '$sec' (known: $ALL_SECTIONS)"
done
# wants SECTION: it is among the sections to run (the HOOKS modes run alone).
wants() { [[ -z $HOOKS && ,$SECTIONS, == *",$1,"* ]]; }
NEED_NGINX=0
if [[ -n $HOOKS ]] || wants nginx || wants wrk; then NEED_NGINX=1; fi
NEED_SINK=0
if wants slow || wants latency || wants parked || wants crash; then NEED_SINK=1; fi
NEED_CERT=0
if (( NEED_NGINX && HTTPS )) || (( NEED_SINK && SINK_TLS )); then NEED_CERT=1; fi
EXPECTED=$(( ROWS + UPDATES ))

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# ---------------------------------------------------------------- helpers

now() { printf '%s' "$EPOCHREALTIME"; }
# nap SECONDS: sleep without starting a process, for polling loops: a read
# that times out on a FIFO this shell holds open at both ends, which never
# receives data (NAP_FD, opened once the temp dir exists).
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }
# elapsed START END -> seconds with 3 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# rate COUNT SECONDS -> changes per second, integer
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "inf" }'; }

# A port nothing on this machine uses, below the ephemeral range so that no
# outgoing connection can be holding it.
port_in_use() {
    if command -v ss >/dev/null; then
        ss -Htan 2>/dev/null | awk -v p="$1" '{ n = split($4, a, ":"); if (a[n] == p) found = 1 } END { exit !found }'
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
free_port() {
    local p i low=32768 hi
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    hi=$(( low > 12000 ? low - 1 : 65000 ))
    for i in $(seq 1 200); do
        p=$(( 10000 + (RANDOM * 32768 + RANDOM) % (hi - 10000) ))
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

# CPU seconds (user + system) a live process has used so far.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_seconds() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    # Fields after the ")" that closes the command name: state is field 3,
    # utime 14 and stime 15 of the whole line.
    awk -v t="$CLK_TCK" '{ printf "%.2f", ($12 + $13) / t }' <<<"${stat##*) }"
}
# CPU seconds nginx's workers have used so far, all together.
nginx_cpu() {
    local p total=0
    for p in $(pgrep -P "$NGINX_PID" 2>/dev/null || true); do
        total=$(awk -v a="$total" -v b="$(cpu_seconds "$p")" 'BEGIN { printf "%.2f", a + b }')
    done
    echo "$total"
}

# The whole machine's CPU ticks from /proc/stat's cpu line: "busy softirq
# steal total" (busy: all but idle and iowait; guest time is already in user).
machine_ticks() {
    awk '/^cpu / { t = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; print t - $5 - $6, $8, $9, t; exit }' /proc/stat
}
# How busy all cores were between two machine_ticks readings: whether the
# cores, not one program, were the limit. Softirq is the loopback network's
# share charged to no process; steal is time the hypervisor gave elsewhere.
machine_busy() {
    local busy
    busy=$(awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[4] - x[4];
        if (t <= 0) exit 1
        printf "%.0f%% of all cores busy (softirq %.0f%%, steal %.0f%%)", 100 * (y[1] - x[1]) / t, 100 * (y[2] - x[2]) / t, 100 * (y[3] - x[3]) / t }') \
        || die "cannot measure the machine's CPU use: /proc/stat did not advance ($1 -> $2)"
    echo "$busy"
}

# CHILDREN_CPU: CPU seconds (user + system) of this shell's finished
# children so far. Called directly, not in $(...): a subshell has its own.
children_cpu() {
    times >"$TMP/times.out"
    # Line 2, children: "0m1.234s 0m0.567s" (user, system).
    CHILDREN_CPU=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.2f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$TMP/times.out")
    [[ $CHILDREN_CPU =~ ^[0-9.]+$ ]] || die "could not read the children's CPU time from: $(cat "$TMP/times.out")"
}

# Wait for a pid to exit, at most $2 seconds; 0 if it exited.
wait_exit() {
    local pid=$1 deadline=$(( SECONDS + $2 ))
    while kill -0 "$pid" 2>/dev/null; do
        (( SECONDS < deadline )) || return 1
        sleep 0.1
    done
}

IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1
# PostgreSQL refuses to run as root: its programs run as the postgres user.
as_pg() {
    if (( IS_ROOT )); then runuser -u postgres -- "$@"; else "$@"; fi
}

apt_install() {
    (( IS_ROOT )) || die "$* is not installed and installing needs root (apt-get install -y $*)"
    command -v apt-get >/dev/null || die "$* is not installed and apt-get is not available"
    say "installing $* with apt-get..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$@" >/dev/null; }
}

# ------------------------------------------------------------ state/cleanup

TMP=""
PG_STARTED=0
NGINX_PID=""
WALHOOK_PID=""
RECV_PID=""
SINK_PID=""
LOAD_PID=""
# Logs whose last lines are printed when the run fails (beside the fixed ones).
SECTION_LOGS=()

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $LOAD_PID ]] && kill -0 "$LOAD_PID" 2>/dev/null; then
        stop_load
    fi
    if [[ -n $SINK_PID ]] && kill -0 "$SINK_PID" 2>/dev/null; then
        kill -TERM "$SINK_PID" 2>/dev/null; wait_exit "$SINK_PID" 5 || kill -KILL "$SINK_PID" 2>/dev/null
    fi
    if [[ -n $RECV_PID ]] && kill -0 "$RECV_PID" 2>/dev/null; then
        kill -TERM "$RECV_PID" 2>/dev/null; wait_exit "$RECV_PID" 5 || kill -KILL "$RECV_PID" 2>/dev/null
    fi
    if [[ -n $WALHOOK_PID ]] && kill -0 "$WALHOOK_PID" 2>/dev/null; then
        kill -TERM "$WALHOOK_PID" 2>/dev/null
        wait_exit "$WALHOOK_PID" 20 || kill -KILL "$WALHOOK_PID" 2>/dev/null
    fi
    if [[ -n $NGINX_PID ]] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -QUIT "$NGINX_PID" 2>/dev/null
        wait_exit "$NGINX_PID" 10 || { pkill -KILL -P "$NGINX_PID"; kill -KILL "$NGINX_PID"; } 2>/dev/null
    fi
    pq_stop
    if (( PG_STARTED )); then
        as_pg "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -m fast -t 30 stop >/dev/null 2>&1 \
            || as_pg "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -m immediate stop >/dev/null 2>&1
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        if (( rc != 0 )); then
            for f in walhook.log walhook-https.log pg/postgres.log nginx/error.log recvlogical.log \
                     "${SECTION_LOGS[@]}"; do
                if [[ -s $TMP/$f ]]; then
                    echo "---- last lines of $f ----" >&2
                    tail -n 25 "$TMP/$f" >&2
                fi
            done
        fi
        if (( KEEP_TMP )); then
            echo "[bench] temp dir kept: $TMP" >&2
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ build

WALHOOK=${WALHOOK_BIN:-$REPO/target/release/walhook}
if [[ $SKIP_BUILD != 1 && -z ${WALHOOK_BIN:-} ]]; then
    say "cargo build --release"
    cargo build --release --quiet || die "cargo build --release failed"
fi
[[ -x $WALHOOK ]] || die "$WALHOOK not found (build it with cargo build --release)"
POST_BIN=$REPO/target/release/walhook-post
if wants wrk && [[ ! -x $POST_BIN || ( -n ${WALHOOK_BIN:-} && $SKIP_BUILD != 1 ) ]]; then
    say "cargo build --release -p walhook-lab --bin walhook-post"
    cargo build --release --quiet -p walhook-lab --bin walhook-post || die "building walhook-post failed"
fi
! wants wrk || [[ -x $POST_BIN ]] || die "$POST_BIN not found (cargo build --release -p walhook-lab)"
SINK_BIN=$REPO/target/release/walhook-sink
if (( NEED_SINK )) && [[ ! -x $SINK_BIN || ( -n ${WALHOOK_BIN:-} && $SKIP_BUILD != 1 ) ]]; then
    say "cargo build --release -p walhook-lab --bin walhook-sink"
    cargo build --release --quiet -p walhook-lab --bin walhook-sink || die "building walhook-sink failed"
fi
(( NEED_SINK == 0 )) || [[ -x $SINK_BIN ]] || die "$SINK_BIN not found (cargo build --release -p walhook-lab)"

# ---------------------------------------------------------------- binaries

PG_BIN=""
find_pg_bin() {
    local d
    if command -v initdb >/dev/null && command -v postgres >/dev/null; then
        d=$(dirname "$(readlink -f "$(command -v initdb)")")
        [[ -x $d/pg_ctl && -x $d/postgres ]] && { PG_BIN=$d; return 0; }
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $d/initdb && -x $d/postgres && -x $d/pg_ctl ]] && { PG_BIN=$d; return 0; }
    done
    return 1
}
find_pg_bin || { apt_install postgresql && find_pg_bin; } \
    || die "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found"
pg_tool() {  # a client program, preferably from the server's version
    if [[ -x $PG_BIN/$1 ]]; then echo "$PG_BIN/$1"
    elif command -v "$1" >/dev/null; then command -v "$1"
    else return 1; fi
}
PSQL_BIN=$(pg_tool psql) || die "psql not found"
RECVLOGICAL_BIN=$(pg_tool pg_recvlogical) || die "pg_recvlogical not found"

PGBENCH_BIN=""
if wants latency || wants parked || wants crash; then
    PGBENCH_BIN=$(pg_tool pgbench) || die "pgbench not found (it makes the steady workloads)"
fi
if (( NEED_NGINX )); then
    if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
        apt_install nginx-light || apt_install nginx || die "could not install nginx"
    fi
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
    [[ -x $NGINX_BIN ]] || die "nginx not found"
fi
if wants wrk && ! command -v wrk >/dev/null; then
    apt_install wrk || die "could not install wrk (needed by SECTIONS=wrk)"
fi
if wants wrk; then command -v wrk >/dev/null || die "wrk not found"; fi
if (( IS_ROOT )); then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run PostgreSQL as"
fi
command -v curl >/dev/null || die "curl is needed (to check the receiver)"
if (( NEED_CERT )) && ! command -v openssl >/dev/null; then
    apt_install openssl || die "openssl is needed for the https cases (or run with HTTPS=0 SINK_TLS=0)"
fi

# -------------------------------------------------------------- PostgreSQL

TMP=$(mktemp -d /tmp/walhook-bench.XXXXXX)
mkfifo "$TMP/nap.fifo"
exec {NAP_FD}<>"$TMP/nap.fifo"
chmod 755 "$TMP"
mkdir -p "$TMP/pg" "$TMP/nginx"
(( IS_ROOT )) && chown postgres: "$TMP/pg"

say "initdb in $TMP/pg (PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'))"
as_pg "$PG_BIN/initdb" -D "$TMP/pg/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
    >"$TMP/pg/initdb.log" 2>&1 \
    || as_pg "$PG_BIN/initdb" -D "$TMP/pg/data" -U postgres -A trust -E UTF8 --locale=C \
        >"$TMP/pg/initdb.log" 2>&1 \
    || { cat "$TMP/pg/initdb.log" >&2; die "initdb failed"; }
cat >>"$TMP/pg/data/postgresql.conf" <<EOF

# walhook bench
listen_addresses = '127.0.0.1'
unix_socket_directories = '$TMP/pg'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
fsync = off
autovacuum = off
max_wal_size = 4GB
logging_collector = off
EOF
PG_STARTED=1
for attempt in 1 2 3; do
    PG_PORT=$(free_port) || die "no free port for PostgreSQL"
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT (fsync=off)"
    if as_pg "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/postgres.log" -o "-p $PG_PORT" \
        -w -t 60 start >/dev/null; then
        break
    fi
    (( attempt < 3 )) || die "PostgreSQL did not start (see its log below)"
    say "PostgreSQL did not start; trying another port"
done

PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/bench"
psql_do() { "$PSQL_BIN" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
q() { psql_do -d bench -c "$1"; }

# Polls that run while a measurement is timed must not fork. On this kind of
# machine one psql per check costs about 70 ms of CPU (psql, plus the backend
# PostgreSQL starts for it) and one curl about 15 ms: polled every 50 ms,
# they took about a third of both cores from the process being timed. So
# those polls go through one psql session kept open (pq) and bash's own
# /dev/tcp (http_get).

# pq SQL: run one statement on the polling session; its answer (lines
# joined) lands in PQ_OUT, empty on an error. A session that died (a
# PostgreSQL restart) is started again, once per call.
PQ_SESSION_PID=""
pq() {
    local try line
    for try in 1 2; do
        if [[ -z $PQ_SESSION_PID ]] || ! kill -0 "$PQ_SESSION_PID" 2>/dev/null; then
            pq_start
        fi
        PQ_OUT=""
        if printf '%s;\n\\echo __pq_end\n' "$1" 2>/dev/null >&"$PQ_WRITE_FD"; then
            while IFS= read -r -t 30 line 2>/dev/null <&"$PQ_READ_FD"; do
                [[ $line == __pq_end ]] && return 0
                PQ_OUT+=$line
            done
        fi
        pq_stop
    done
    return 1
}
pq_start() {
    coproc POLL_PSQL { PGAPPNAME=bench_poll exec "$PSQL_BIN" -X -q -At -h 127.0.0.1 -p "$PG_PORT" \
        -U postgres -d bench 2>>"$TMP/poll-psql.err"; }
    # bash unsets POLL_PSQL once the session has exited: keep its descriptors.
    PQ_SESSION_PID=$! PQ_WRITE_FD=${POLL_PSQL[1]} PQ_READ_FD=${POLL_PSQL[0]}
}
pq_stop() {
    [[ -n $PQ_SESSION_PID ]] || return 0
    kill -TERM "$PQ_SESSION_PID" 2>/dev/null || true
    wait "$PQ_SESSION_PID" 2>/dev/null || true
    PQ_SESSION_PID=""
}

# http_get PORT PATH: GET http://127.0.0.1:PORT/PATH over bash's /dev/tcp
# (HTTP/1.0, so the server closes when done); the body lands in HTTP_BODY.
# Fails when nothing answers.
http_get() {
    local fd line in_body=0
    HTTP_BODY=""
    # In braces: a redirection on exec itself would silence the shell for good.
    { exec {fd}<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&"$fd" 2>/dev/null
    while IFS= read -r -t 10 line <&"$fd" || [[ -n $line ]]; do
        line=${line%$'\r'}
        if (( in_body )); then HTTP_BODY+=$line$'\n'; elif [[ -z $line ]]; then in_body=1; fi
    done
    exec {fd}>&-
    (( in_body ))
}

psql_do -d postgres -c "CREATE DATABASE bench" >/dev/null || die "CREATE DATABASE failed"
q "CREATE TABLE bench_item (id int PRIMARY KEY, n int NOT NULL, label text NOT NULL)"
# The sink's logs are loaded here to be counted; no installation captures it.
q "CREATE SCHEMA bench_result" >/dev/null

# ------------------------------------------------------------------- nginx

STUB_STATUS=0
# Connections per nginx worker: with fan-out, every hook keeps up to
# CONCURRENCY connections open, and a worker that runs out closes idle
# ones, which walhook sees as failed attempts.
NGINX_CONNECTIONS=1024
if [[ $HOOKS == fanout ]]; then
    NGINX_CONNECTIONS=$(( FANOUT_HOOKS * (CONCURRENCY_MAX < 8 ? CONCURRENCY_MAX : 8) + 1024 ))
fi
if (( NEED_NGINX )) && "$NGINX_BIN" -V 2>&1 | grep -q stub_status; then STUB_STATUS=1; fi
if (( NEED_CERT )); then
    # A self-signed certificate for localhost (P-256, as most sites now
    # serve), which walhook is then given as delivery.ca_file. CA:FALSE: a
    # CA certificate cannot be a server's own.
    mkdir -p "$TMP/nginx/tls"
    cat >"$TMP/nginx/tls/openssl.cnf" <<EOF
[req]
distinguished_name = dn
x509_extensions = leaf
prompt = no
[dn]
CN = localhost
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EOF
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -config "$TMP/nginx/tls/openssl.cnf" \
        -keyout "$TMP/nginx/tls/key.pem" -out "$TMP/nginx/tls/cert.pem" \
        >"$TMP/nginx/tls/openssl.log" 2>&1 \
        || { cat "$TMP/nginx/tls/openssl.log" >&2; die "openssl could not make the certificate"; }
fi
# The receiver: 200 to everything, no logging, keep-alive without limit.
write_nginx_conf() {
    cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile $(( 2 * NGINX_CONNECTIONS ));
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections $NGINX_CONNECTIONS; }
http {
    access_log off;
    client_body_buffer_size 1m;
    client_max_body_size 16m;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 200; }
        $( (( STUB_STATUS )) && echo "location = /__bench_status { stub_status; }" )
    }
$( (( HTTPS )) && cat <<TLS
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        ssl_certificate $TMP/nginx/tls/cert.pem;
        ssl_certificate_key $TMP/nginx/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        location / { return 200; }
    }
TLS
)
}
EOF
}
if (( NEED_NGINX )); then
    code=""
    for attempt in 1 2 3; do
        NGINX_PORT=$(free_port) || die "no free port for nginx"
        NGINX_TLS_PORT=$(free_port) || die "no free port for nginx"
        [[ $NGINX_TLS_PORT != "$NGINX_PORT" ]] || NGINX_TLS_PORT=$(free_port) || die "no free port for nginx"
        write_nginx_conf
        "$NGINX_BIN" -t -q -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" \
            || die "nginx rejected its config ($TMP/nginx/nginx.conf)"
        say "starting nginx on 127.0.0.1:$NGINX_PORT$( (( HTTPS )) && echo " and, TLS, $NGINX_TLS_PORT") (worker_processes 2, location / { return 200; })"
        "$NGINX_BIN" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" \
            >"$TMP/nginx/stdout.log" 2>&1 &
        NGINX_PID=$!
        HOOK_URL="http://127.0.0.1:$NGINX_PORT/hook"
        for _ in $(seq 1 100); do
            code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "$HOOK_URL" 2>/dev/null || true)
            [[ $code == 200 ]] && break
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.1
        done
        if [[ $code == 200 ]] && (( HTTPS )); then
            HOOK_TLS_URL="https://localhost:$NGINX_TLS_PORT/hook"
            code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TMP/nginx/tls/cert.pem" \
                -X POST -d '{}' "$HOOK_TLS_URL" 2>/dev/null || true)
            [[ $code == 200 ]] || die "nginx does not answer POST $HOOK_TLS_URL with 200 (got '$code')"
        fi
        [[ $code == 200 ]] && break
        if kill -0 "$NGINX_PID" 2>/dev/null; then
            die "nginx does not answer POST $HOOK_URL with 200 (got '$code')"
        fi
        NGINX_PID=""
        (( attempt < 3 )) || die "nginx exited at start (see its log below)"
        say "nginx exited at start; trying another port"
    done
fi

# NGINX_REQUESTS: the requests nginx has served; -1 without stub_status or
# when it does not answer. The status request itself is counted, so callers
# subtract one per call. Polled while walhook is timed, so it does not fork.
nginx_requests() {
    local lines=() fields=()
    NGINX_REQUESTS=-1
    (( STUB_STATUS )) || return 0
    http_get "$NGINX_PORT" /__bench_status || return 0
    # "Active connections: N", "server accepts handled requests", " A H R"
    mapfile -t lines <<<"$HTTP_BODY"
    read -r -a fields <<<"${lines[2]:-}"
    [[ ${fields[2]:-} =~ ^[0-9]+$ ]] && NGINX_REQUESTS=${fields[2]}
    return 0
}

# await_caught_up SLOT REQUESTS USAGE_SQL WHAT: `walhook run` (WALHOOK_PID)
# was started at CATCH_T0 ($EPOCHREALTIME), NGINX_BASE read just before.
# Polls every 50 ms, without forking, for two milestones; walhook is done
# when both are reached:
# - SLOT's confirmed_flush_lsn reaches END_LSN (walhook confirms a position
#   once everything before it is settled, which includes events parked in
#   the delivery table, so this alone does not prove delivery);
# - the receiver has REQUESTS more requests: nginx's counter when
#   stub_status is available, else the calls USAGE_SQL ("calls errors" from
#   webhook_usage, written about once a second) counts.
# Sets SLOT_SECONDS and DELIVERED_SECONDS (since CATCH_T0), DELIVERED_BY and
# NGINX_POLLS (the status requests nginx counted). With nginx's counter it
# also sets FIRST_SECONDS: the last poll that found no request yet, so that
# the time from it to the last request is never shorter than the delivery
# phase (empty without stub_status). Dies naming WHAT when walhook exits or
# WALHOOK_TIMEOUT passes.
await_caught_up() {
    local slot=$1 requests=$2 usage_sql=$3 what=$4 slot_at="" delivered_at="" calls deadline next_progress
    local polled_at got none_until=$CATCH_T0 first_seen=0
    deadline=$(( SECONDS + WALHOOK_TIMEOUT ))
    next_progress=$(( SECONDS + 10 ))
    NGINX_POLLS=0
    if (( NGINX_BASE >= 0 )); then DELIVERED_BY="nginx stub_status"; else DELIVERED_BY="webhook_usage.total_calls"; fi
    if (( requests == 0 )); then delivered_at=$CATCH_T0; fi
    while :; do
        kill -0 "$WALHOOK_PID" 2>/dev/null || die "walhook exited during $what (see its log below)"
        if [[ -z $delivered_at ]]; then
            if (( NGINX_BASE >= 0 )); then
                polled_at=$EPOCHREALTIME
                nginx_requests
                NGINX_POLLS=$(( NGINX_POLLS + 1 ))
                # Requests walhook sent; 0 when nginx did not answer.
                got=0
                if (( NGINX_REQUESTS >= 0 )); then got=$(( NGINX_REQUESTS - NGINX_BASE - NGINX_POLLS )); fi
                if (( got >= requests )); then delivered_at=$EPOCHREALTIME; fi
                if (( !first_seen )); then
                    if (( got > 0 )); then first_seen=1; else none_until=$polled_at; fi
                fi
            else
                pq "$usage_sql" || true
                calls=${PQ_OUT%% *}
                if [[ $calls =~ ^[0-9]+$ ]] && (( calls >= requests )); then delivered_at=$EPOCHREALTIME; fi
            fi
        fi
        if [[ -z $slot_at ]]; then
            pq "SELECT confirmed_flush_lsn >= '$END_LSN'::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = '$slot'" || true
            if [[ $PQ_OUT == t ]]; then slot_at=$EPOCHREALTIME; fi
        fi
        [[ -n $slot_at && -n $delivered_at ]] && break
        if (( SECONDS >= deadline )); then
            pq "$usage_sql" || true
            [[ -n $slot_at ]] \
                || die "$what: walhook did not confirm $END_LSN within ${WALHOOK_TIMEOUT}s (webhook_usage calls/errors: $PQ_OUT)"
            die "$what: the receiver did not get all $requests requests within ${WALHOOK_TIMEOUT}s ($DELIVERED_BY; webhook_usage calls/errors: $PQ_OUT)"
        fi
        if (( SECONDS >= next_progress )); then
            pq "$usage_sql" || true
            say "  ... $(elapsed "$CATCH_T0" "$EPOCHREALTIME")s, webhook_usage calls/errors: $PQ_OUT${slot_at:+, slot confirmed}"
            next_progress=$(( SECONDS + 10 ))
        fi
        nap 0.05
    done
    SLOT_SECONDS=$(elapsed "$CATCH_T0" "$slot_at")
    DELIVERED_SECONDS=$(elapsed "$CATCH_T0" "$delivered_at")
    FIRST_SECONDS=""
    if (( first_seen )); then FIRST_SECONDS=$(elapsed "$CATCH_T0" "$none_until"); fi
}

# ------------------------------------------------------------ walhook setup

# walhook_config SCHEMA EXTRA_DELIVERY [TABLE]: one installation (schema,
# slot and publication all named SCHEMA) capturing public.TABLE (default
# bench_item) only, so no installation publishes another's tables.
walhook_config() {
    cat <<EOF
[postgres]
url = "$PG_URL"
status_interval = "1s"
schema = "$1"
slot = "$1"
publication = "$1"

[capture]
include = ["public.${3:-bench_item}"]

[delivery]
allow_http = true
allow_private_targets = true
concurrency_per_webhook = $CONCURRENCY_TOML
$2
${DELIVERY_EXTRA:-}
EOF
}
# setup_walhook CONFIG SCHEMA URL: run setup, register the hook; prints its id.
setup_walhook() {
    "$WALHOOK" -c "$1" setup >"$1.setup.log" 2>&1 \
        || { cat "$1.setup.log" >&2; die "walhook setup failed ($1)"; }
    q "INSERT INTO $2.webhook (name, events, target_url, secret)
       VALUES ('bench', '*', '$3', 'bench-secret') RETURNING webhook_id" | head -n1
}
walhook_config walhook "" >"$TMP/walhook.toml"
if [[ -n $HOOKS ]]; then
    say "walhook setup"
    "$WALHOOK" -c "$TMP/walhook.toml" setup >"$TMP/setup.log" 2>&1 \
        || { cat "$TMP/setup.log" >&2; die "walhook setup failed"; }
fi

# ------------------------------------------- HOOKS=compare: the cost of matching
#
# The same workload four times, each on a fresh slot created after the
# webhook table was filled for the case (so the hooks stand as they are from
# the slot's first change on): no hook; HOOK_COUNT hooks none of which
# matches bench_item (each `nomatchN.created, otherN.*`); the same plus one
# hook `bench_item.*` at nginx; that hook alone. Each run is timed from
# starting `walhook run` until the slot is confirmed at the end LSN and, when
# a hook matches, nginx has every request. pg_recvlogical reads the first
# case's WAL as the yardstick.
#
# HOOKS=fanout runs one case the same way: FANOUT_HOOKS hooks, all
# `bench_item.*`, so that each change is sent FANOUT_HOOKS times.

# The rows of the webhook table for case $1; sets CASE_REQUESTS (requests
# the receiver must get).
fill_webhook_table() {
    q "DELETE FROM walhook.webhook; DELETE FROM walhook.webhook_usage;
       DELETE FROM walhook.delivery; DELETE FROM walhook.registry_snapshot" >/dev/null
    CASE_REQUESTS=0
    if [[ $1 == fanout ]]; then
        q "INSERT INTO walhook.webhook (name, events, target_url, secret)
           SELECT 'fan-out ' || g, 'bench_item.*', '$HOOK_URL/fan' || g, 'secret ' || g
             FROM generate_series(1, $FANOUT_HOOKS) AS g" >/dev/null
        CASE_REQUESTS=$(( EXPECTED * FANOUT_HOOKS ))
    fi
    if [[ $1 == nomatch || $1 == nomatch+one ]]; then
        q "INSERT INTO walhook.webhook (name, events, target_url, secret)
           SELECT 'tenant ' || g, 'nomatch' || g || '.created, other' || g || '.*',
                  '$HOOK_URL/tenant' || g, 'secret ' || g
             FROM generate_series(1, $HOOK_COUNT) AS g" >/dev/null
    fi
    if [[ $1 == one || $1 == nomatch+one ]]; then
        q "INSERT INTO walhook.webhook (name, events, target_url, secret)
           VALUES ('bench', 'bench_item.*', '$HOOK_URL', 'bench-secret')" >/dev/null
        CASE_REQUESTS=$EXPECTED
    fi
}

# Requests walhook has counted, over all hooks (written about once a second):
# "calls errors".
CALLS_COUNTED_SQL="SELECT coalesce(sum(total_calls), 0) || ' ' || coalesce(sum(total_errors), 0)
                     FROM walhook.webhook_usage"
calls_counted() { q "$CALLS_COUNTED_SQL" 2>/dev/null || true; }

# Time `walhook run` catching up to END_LSN for case $1; sets CASE_SECONDS,
# CASE_HWM (kB) and CASE_CPU (s).
catch_up() {
    local case=$1
    nginx_requests
    NGINX_BASE=$NGINX_REQUESTS
    CATCH_T0=$EPOCHREALTIME
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$WALHOOK" -c "$TMP/walhook.toml" run \
        >"$TMP/walhook-$case.log" 2>&1 &
    WALHOOK_PID=$!
    SECTION_LOGS+=("walhook-$case.log")
    await_caught_up walhook "$CASE_REQUESTS" "$CALLS_COUNTED_SQL" "case $case"
    CASE_SECONDS=$(awk -v a="$SLOT_SECONDS" -v b="$DELIVERED_SECONDS" 'BEGIN { printf "%.3f", (a > b ? a : b) }')
    CASE_HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$WALHOOK_PID/status")
    CASE_CPU=$(cpu_seconds "$WALHOOK_PID")
    kill -TERM "$WALHOOK_PID"
    wait_exit "$WALHOOK_PID" 30 || die "walhook did not exit within 30 s of SIGTERM (case $case)"
    WALHOOK_PID=""
}

if [[ -n $HOOKS ]]; then
    if [[ $HOOKS == compare ]]; then CASES=(none nomatch nomatch+one one); else CASES=(fanout); fi
    declare -A RATE SECS HWM CPU
    for case in "${CASES[@]}"; do
        # A fresh slot per case, created once the hooks stand.
        if [[ $(q "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walhook'") == 1 ]]; then
            q "SELECT pg_drop_replication_slot('walhook')" >/dev/null
        fi
        q "TRUNCATE bench_item" >/dev/null
        fill_webhook_table "$case"
        "$WALHOOK" -c "$TMP/walhook.toml" setup >"$TMP/setup-$case.log" 2>&1 \
            || { cat "$TMP/setup-$case.log" >&2; die "walhook setup failed (case $case)"; }
        if [[ $case == none ]]; then
            q "SELECT pg_create_logical_replication_slot('bench_recvlogical', 'pgoutput')" >/dev/null
        fi
        say "case $case: $(q "SELECT count(*) FROM walhook.webhook") hooks; workload: $ROWS inserts, $UPDATES updates"
        q "INSERT INTO bench_item (id, n, label)
           SELECT g, g, 'item ' || g FROM generate_series(1, $ROWS) AS g" >/dev/null
        q "UPDATE bench_item SET n = n + 1, label = label || ' upd' WHERE id <= $UPDATES" >/dev/null
        END_LSN=$(q "SELECT pg_current_wal_lsn()")
        if [[ $case == none ]]; then
            t0=$(now)
            timeout "$RECVLOGICAL_TIMEOUT" "$RECVLOGICAL_BIN" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench \
                --slot=bench_recvlogical --start --endpos="$END_LSN" --no-loop \
                -o proto_version=1 -o publication_names=walhook,walhook_keyless \
                -f /dev/null >"$TMP/recvlogical.log" 2>&1 || die "pg_recvlogical failed"
            RECV_SECONDS=$(elapsed "$t0" "$(now)")
            RECV_RATE=$(rate "$EXPECTED" "$RECV_SECONDS")
            q "SELECT pg_drop_replication_slot('bench_recvlogical')" >/dev/null
            say "pg_recvlogical: ${RECV_SECONDS}s, $RECV_RATE changes/s"
        fi
        catch_up "$case"
        read -r calls errors <<<"$(calls_counted)"
        [[ $calls == "$CASE_REQUESTS" && $errors == 0 ]] \
            || die "case $case: webhook_usage counts $calls calls and $errors errors, expected $CASE_REQUESTS and 0"
        RATE[$case]=$(rate "$EXPECTED" "$CASE_SECONDS")
        SECS[$case]=$CASE_SECONDS
        HWM[$case]=$(( CASE_HWM / 1024 ))
        CPU[$case]=$CASE_CPU
        say "case $case: ${CASE_SECONDS}s, ${RATE[$case]} changes/s"
    done
    if [[ $HOOKS == fanout ]]; then
        echo
        echo "================ walhook benchmark: fan-out ================"
        echo "workload        : $ROWS inserts + $UPDATES updates = $EXPECTED changes of bench_item"
        echo "hooks           : $FANOUT_HOOKS, all 'bench_item.*', each its own URL on nginx"
        echo "requests        : $CASE_REQUESTS delivered in ${SECS[fanout]} s: $(rate "$CASE_REQUESTS" "${SECS[fanout]}") requests/s"
        echo "changes         : ${RATE[fanout]} changes/s"
        echo "walhook         : peak RSS ${HWM[fanout]} MiB, CPU ${CPU[fanout]} s"
        echo "============================================================"
        exit 0
    fi
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "?" }'; }
    verdict() { awk -v r="$1" 'BEGIN { print (r >= 0.9 ? "meets the goal (>= 0.9)" : "BELOW the goal (>= 0.9)") }'; }
    R1=$(ratio "${RATE[nomatch]}" "${RATE[none]}")
    R2=$(ratio "${RATE[nomatch+one]}" "${RATE[one]}")
    echo
    echo "================ walhook benchmark: the cost of matching ================"
    echo "workload        : $ROWS inserts + $UPDATES updates = $EXPECTED changes of bench_item, per case"
    echo "pg_recvlogical  : $RECV_RATE changes/s (first case's WAL)"
    printf '%-40s %10s %9s %9s %9s\n' case changes/s seconds "peak RSS" "CPU"
    for case in "${CASES[@]}"; do
        case $case in
            none) label="no hook" ;;
            nomatch) label="$HOOK_COUNT hooks, none matching" ;;
            nomatch+one) label="$HOOK_COUNT hooks + 1 matching (delivered)" ;;
            one) label="1 hook matching (delivered)" ;;
        esac
        printf '%-40s %10s %9s %5s MiB %7s s\n' "$label" "${RATE[$case]}" "${SECS[$case]}" "${HWM[$case]}" "${CPU[$case]}"
    done
    echo "$HOOK_COUNT none matching / no hook      : $R1   $(verdict "$R1")"
    echo "$HOOK_COUNT + 1 matching / 1 hook alone  : $R2   $(verdict "$R2")"
    echo "Each time includes walhook's start-up and up to ~1.2 s of confirmation"
    echo "delay: use ROWS=300000 UPDATES=150000 or more so that they weigh little."
    echo "=========================================================================="
    exit 0
fi

# ----------------------------------------------------- section nginx
#
# The backlog of ROWS + UPDATES changes delivered to nginx over http (and
# https), against pg_recvlogical on the same WAL.
section_nginx() {
    HOOK_ID=$(setup_walhook "$TMP/walhook.toml" walhook "$HOOK_URL")
    [[ $HOOK_ID =~ ^[0-9]+$ ]] || die "registering the webhook failed"
    if (( HTTPS )); then
        # The same changes, delivered over TLS by a second installation with its
        # own slot, so both start from the same backlog.
        walhook_config walhook_tls "ca_file = \"$TMP/nginx/tls/cert.pem\"" >"$TMP/walhook-https.toml"
        say "walhook setup (https: schema, slot and publication walhook_tls)"
        TLS_HOOK_ID=$(setup_walhook "$TMP/walhook-https.toml" walhook_tls "$HOOK_TLS_URL")
        [[ $TLS_HOOK_ID =~ ^[0-9]+$ ]] || die "registering the https webhook failed"
    fi
    q "SELECT pg_create_logical_replication_slot('bench_recvlogical', 'pgoutput')" >/dev/null
    [[ $(q "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('walhook', 'bench_recvlogical', 'walhook_tls')") == $(( 2 + HTTPS )) ]] \
        || die "the replication slots are not there"

    # ---------------------------------------------------------------- workload

    say "workload: $ROWS inserts in one transaction, $UPDATES updates in another (no reader running)"
    t0=$(now)
    q "BEGIN;
       INSERT INTO bench_item (id, n, label)
            SELECT g, g, 'item ' || g FROM generate_series(1, $ROWS) AS g;
       COMMIT;" >/dev/null
    q "BEGIN;
       UPDATE bench_item SET n = n + 1, label = label || ' upd' WHERE id <= $UPDATES;
       COMMIT;" >/dev/null
    END_LSN=$(q "SELECT pg_current_wal_lsn()")
    t1=$(now)
    WORKLOAD_SECONDS=$(elapsed "$t0" "$t1")
    WAL_BYTES=$(q "SELECT pg_wal_lsn_diff('$END_LSN', restart_lsn) FROM pg_replication_slots WHERE slot_name = 'bench_recvlogical'")
    WAL_MIB=$(awk -v b="$WAL_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
    say "workload written in ${WORKLOAD_SECONDS}s; end LSN $END_LSN, $WAL_MIB MiB of WAL"

    # ---------------------------------------------------------- pg_recvlogical

    say "pg_recvlogical catching up to $END_LSN"
    t0=$(now)
    timeout "$RECVLOGICAL_TIMEOUT" "$RECVLOGICAL_BIN" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench \
        --slot=bench_recvlogical --start --endpos="$END_LSN" --no-loop \
        -o proto_version=1 -o publication_names=walhook,walhook_keyless \
        -f /dev/null >"$TMP/recvlogical.log" 2>&1 &
    RECV_PID=$!
    set +e
    wait "$RECV_PID"
    recv_rc=$?
    set -e
    t1=$(now)
    RECV_PID=""
    (( recv_rc != 124 )) || die "pg_recvlogical did not reach $END_LSN within ${RECVLOGICAL_TIMEOUT}s"
    (( recv_rc == 0 )) || { cat "$TMP/recvlogical.log" >&2; die "pg_recvlogical exited with $recv_rc"; }
    RECV_SECONDS=$(elapsed "$t0" "$t1")
    RECV_RATE=$(rate "$EXPECTED" "$RECV_SECONDS")
    [[ $(q "SELECT confirmed_flush_lsn >= '$END_LSN'::pg_lsn FROM pg_replication_slots
             WHERE slot_name = 'bench_recvlogical'") == t ]] \
        || die "pg_recvlogical exited but its slot did not reach $END_LSN"
    say "pg_recvlogical: ${RECV_SECONDS}s, $RECV_RATE changes/s"
    # The slot is no longer needed; it would only hold WAL.
    q "SELECT pg_drop_replication_slot('bench_recvlogical')" >/dev/null

    # ------------------------------------------------------------------ walhook

    # measure_walhook NAME FILE SLOT SCHEMA HOOK_ID: run walhook with
    # $TMP/FILE.toml until it has caught up with the backlog; sets the result
    # variables (RESULT_VARS) for that run.
    measure_walhook() {
        RUN_NAME=$1 RUN_FILE=$2 RUN_SLOT=$3 RUN_SCHEMA=$4 RUN_HOOK=$5
        usage_sql="SELECT total_calls || ' ' || total_errors FROM $RUN_SCHEMA.webhook_usage WHERE webhook_id = $RUN_HOOK"
        usage_row() { q "$usage_sql" 2>/dev/null || true; }

        nginx_requests
        NGINX_BASE=$NGINX_REQUESTS
        NGINX_CPU_BEFORE=$(nginx_cpu)

        say "walhook run ($RUN_NAME): catching up with $EXPECTED changes (timeout ${WALHOOK_TIMEOUT}s)"
        machine_before=$(machine_ticks)
        CATCH_T0=$EPOCHREALTIME
        NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$WALHOOK" -c "$TMP/$RUN_FILE.toml" run >"$TMP/$RUN_FILE.log" 2>&1 &
        WALHOOK_PID=$!
        await_caught_up "$RUN_SLOT" "$EXPECTED" "$usage_sql" "the catch-up ($RUN_NAME)"
        MACHINE_BUSY=$(machine_busy "$machine_before" "$(machine_ticks)")
        WALHOOK_SECONDS=$(awk -v a="$SLOT_SECONDS" -v b="$DELIVERED_SECONDS" 'BEGIN { printf "%.3f", (a > b ? a : b) }')
        WALHOOK_RATE=$(rate "$EXPECTED" "$WALHOOK_SECONDS")
        say "walhook ($RUN_NAME) done after ${WALHOOK_SECONDS}s (slot confirmed $END_LSN at ${SLOT_SECONDS}s, all requests received at ${DELIVERED_SECONDS}s)"

        # Statistics are written about once a second: wait for the last flush.
        calls=""; errors=""
        for _ in $(seq 1 50); do
            read -r calls errors <<<"$(usage_row)" || true
            [[ ${calls:-0} -ge $EXPECTED ]] && break
            sleep 0.1
        done
        ng_final=-1
        if (( NGINX_BASE >= 0 )); then
            nginx_requests
            NGINX_POLLS=$(( NGINX_POLLS + 1 ))
            (( NGINX_REQUESTS >= 0 )) && ng_final=$(( NGINX_REQUESTS - NGINX_BASE - NGINX_POLLS ))
        fi

        # Resources, read while walhook still runs.
        WALHOOK_HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$WALHOOK_PID/status")
        WALHOOK_CPU=$(cpu_seconds "$WALHOOK_PID")
        WALSENDER_PID=$(q "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$RUN_SLOT'")
        WALSENDER_CPU=$( [[ $WALSENDER_PID =~ ^[0-9]+$ ]] && cpu_seconds "$WALSENDER_PID" || echo "?")
        SQL_CPU=0
        for p in $(q "SELECT pid FROM pg_stat_activity WHERE application_name = 'walhook'
                      AND backend_type = 'client backend'" 2>/dev/null || true); do
            SQL_CPU=$(awk -v a="$SQL_CPU" -v b="$(cpu_seconds "$p")" 'BEGIN { printf "%.2f", a + b }')
        done
        NGINX_CPU_AFTER=$(nginx_cpu)
        NGINX_CPU=$(awk -v a="$NGINX_CPU_BEFORE" -v b="$NGINX_CPU_AFTER" 'BEGIN { printf "%.2f", b - a }')

        say "stopping walhook (SIGTERM)"
        kill -TERM "$WALHOOK_PID"
        wait_exit "$WALHOOK_PID" 30 || die "walhook did not exit within 30 s of SIGTERM"
        set +e
        wait "$WALHOOK_PID"
        walhook_rc=$?
        set -e
        WALHOOK_PID=""

        # Log lines without colour codes, in case the terminal escape codes are on.
        sed 's/\x1b\[[0-9;]*m//g' "$TMP/$RUN_FILE.log" >"$TMP/$RUN_FILE.plain.log"
        LOG_WARN=$(grep -c -E '(^| )(WARN|ERROR) ' "$TMP/$RUN_FILE.plain.log" || true)
    }

    # The figures of one run; save_results PREFIX keeps them as PREFIX_NAME,
    # load_results PREFIX brings them back.
    RESULT_VARS=(SLOT_SECONDS DELIVERED_SECONDS FIRST_SECONDS DELIVERED_BY WALHOOK_SECONDS WALHOOK_RATE calls errors
                 ng_final WALHOOK_HWM WALHOOK_CPU WALSENDER_CPU SQL_CPU NGINX_CPU MACHINE_BUSY walhook_rc LOG_WARN RUN_FILE)
    save_results() { local v; for v in "${RESULT_VARS[@]}"; do printf -v "${1}_$v" '%s' "${!v}"; done; }
    load_results() { local v n; for v in "${RESULT_VARS[@]}"; do n="${1}_$v"; printf -v "$v" '%s' "${!n}"; done; }

    measure_walhook http walhook walhook walhook "$HOOK_ID"
    save_results HTTP
    if (( HTTPS )); then
        measure_walhook https walhook-https walhook_tls walhook_tls "$TLS_HOOK_ID"
        save_results TLS
    fi
    load_results HTTP

    # ---------------------------------------------------------------- verdicts

    problems=()
    # verdicts NAME SCHEMA HOOK_ID: the checks of the run whose results are loaded.
    verdicts() {
        [[ ${calls:-} =~ ^[0-9]+$ ]] || problems+=("$1: $2.webhook_usage has no row for webhook $3")
        [[ ${calls:-} == "$EXPECTED" ]] || problems+=("$1: webhook_usage.total_calls is ${calls:-none}, expected $EXPECTED")
        [[ ${errors:-} == 0 ]] || problems+=("$1: webhook_usage.total_errors is ${errors:-none}, expected 0")
        (( ng_final < 0 || ng_final == EXPECTED )) || problems+=("$1: nginx counted $ng_final requests, expected $EXPECTED")
        (( walhook_rc == 0 )) || problems+=("$1: walhook exited with status $walhook_rc after SIGTERM")
    }
    if (( HTTPS )); then
        load_results TLS
        verdicts https walhook_tls "$TLS_HOOK_ID"
        TLS_RATIO=$(awk -v a="$WALHOOK_RATE" -v b="$RECV_RATE" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "?" }')
        TLS_CPU_PCT=$(awk -v c="$WALHOOK_CPU" -v s="$WALHOOK_SECONDS" 'BEGIN { printf "%.0f", 100 * c / s }')
        TLS_DELIVERED_RATE=$(rate "$EXPECTED" "$DELIVERED_SECONDS")
        TLS_WARN_LINES=$(grep -E '(^| )(WARN|ERROR) ' "$TMP/walhook-https.plain.log" | head -n 10 || true)
    fi
    load_results HTTP
    verdicts http walhook "$HOOK_ID"

    RATIO=$(awk -v a="$WALHOOK_RATE" -v b="$RECV_RATE" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "?" }')
    CPU_PCT=$(awk -v c="$WALHOOK_CPU" -v s="$WALHOOK_SECONDS" 'BEGIN { printf "%.0f", 100 * c / s }')
    DELIVERED_RATE=$(rate "$EXPECTED" "$DELIVERED_SECONDS")
    DELIVERED_RATIO=$(awk -v a="$DELIVERED_RATE" -v b="$RECV_RATE" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "?" }')
    # The delivery phase: from the first request to the last. Before it,
    # the walsender decodes the first transaction whole (pgoutput sends a
    # transaction at its commit) while walhook has nothing to send.
    PHASE_RATE=""
    if [[ -n $FIRST_SECONDS ]]; then
        PHASE_RATE=$(rate "$EXPECTED" "$(elapsed "$FIRST_SECONDS" "$DELIVERED_SECONDS")")
    fi
    SLOT_NOTE=""
    if awk -v a="$SLOT_SECONDS" -v b="$DELIVERED_SECONDS" 'BEGIN { exit !(a + 0.5 < b) }'; then
        SLOT_NOTE="NOTE: the slot was confirmed $(elapsed "$SLOT_SECONDS" "$DELIVERED_SECONDS") s before the last request arrived (parked events count as settled)"
    fi
    cat <<EOF

================ walhook benchmark: delivery to nginx ================
workload        : $ROWS inserts (1 transaction) + $UPDATES updates (1 transaction) = $EXPECTED changes
                  table bench_item (id int PRIMARY KEY, n int, label text); $WAL_MIB MiB of WAL
server          : PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), throwaway cluster, fsync=off, autovacuum=off
machine         : $(nproc) CPUs
receiver        : nginx, worker_processes 2, return 200, loopback$( (( HTTPS )) && printf '%s' "; https: the same nginx over TLS 1.3 (self-signed P-256 certificate, walhook's delivery.ca_file)")
walhook config  : concurrency_per_webhook = $CONCURRENCY, status_interval = 1s, 1 hook (events '*')${DELIVERY_EXTRA:+; extra [delivery]: $(tr '\n' ' ' <<<"$DELIVERY_EXTRA")}

pg_recvlogical  : $RECV_RATE changes/s   (${RECV_SECONDS} s to $END_LSN)
walhook         : $WALHOOK_RATE changes/s   (${WALHOOK_SECONDS} s from start until the slot confirmed $END_LSN and the receiver had every request)
ratio           : $RATIO   (walhook / pg_recvlogical)
walhook peak RSS: $(( WALHOOK_HWM / 1024 )) MiB   (VmHWM $WALHOOK_HWM kB)
milestones      : slot confirmed at ${SLOT_SECONDS} s; receiver had all $EXPECTED requests at ${DELIVERED_SECONDS} s ($DELIVERED_BY)
receiver-side   : $DELIVERED_RATE changes/s, ratio $DELIVERED_RATIO   (from the last-request time alone, without the confirmation delay)
delivery phase  : ${PHASE_RATE:-n/a} changes/s$( [[ -n $FIRST_SECONDS ]] && printf '%s' "   (from ${FIRST_SECONDS} s, the last check that found no request yet, to the last request; before it the walsender decodes the first transaction)")
CPU during catch-up: walhook ${WALHOOK_CPU} s (${CPU_PCT}% of one core), its walsender ${WALSENDER_CPU} s, its SQL sessions ${SQL_CPU} s, nginx workers ${NGINX_CPU} s
machine         : $MACHINE_BUSY during the catch-up
webhook_usage   : total_calls ${calls:-?}, total_errors ${errors:-?}; nginx counted $( (( ng_final >= 0 )) && echo "$ng_final" || echo "n/a") requests
walhook log     : $LOG_WARN WARN/ERROR lines; exit status $walhook_rc after SIGTERM
EOF
    if (( HTTPS )); then
        cat <<EOF

over https      : the same $EXPECTED changes from their own slot, by a second installation
walhook https   : $TLS_WALHOOK_RATE changes/s   (${TLS_WALHOOK_SECONDS} s; slot confirmed at ${TLS_SLOT_SECONDS} s, receiver had every request at ${TLS_DELIVERED_SECONDS} s)
ratio           : $TLS_RATIO   (walhook https / pg_recvlogical)
walhook peak RSS: $(( TLS_WALHOOK_HWM / 1024 )) MiB   (VmHWM $TLS_WALHOOK_HWM kB)
CPU during catch-up: walhook ${TLS_WALHOOK_CPU} s (${TLS_CPU_PCT}% of one core), nginx workers ${TLS_NGINX_CPU} s
machine         : $TLS_MACHINE_BUSY during the catch-up
webhook_usage   : total_calls ${TLS_calls:-?}, total_errors ${TLS_errors:-?}; $TLS_LOG_WARN WARN/ERROR lines; exit status $TLS_walhook_rc after SIGTERM

side by side    : http $WALHOOK_RATE changes/s, https $TLS_WALHOOK_RATE changes/s (https / http $(awk -v a="$TLS_WALHOOK_RATE" -v b="$WALHOOK_RATE" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "?" }'))
  receiver-side : http $DELIVERED_RATE changes/s, https $TLS_DELIVERED_RATE changes/s (https / http $(awk -v a="$TLS_DELIVERED_RATE" -v b="$DELIVERED_RATE" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "?" }'); without the confirmation delay)
EOF
    fi
    echo "====================================================================="
    [[ -n $SLOT_NOTE ]] && echo "$SLOT_NOTE"
    if (( LOG_WARN > 0 )); then
        echo "walhook WARN/ERROR lines (first 10):"
        grep -E '(^| )(WARN|ERROR) ' "$TMP/walhook.plain.log" | head -n 10
    fi
    if [[ -n ${TLS_WARN_LINES:-} ]]; then
        echo "walhook (https) WARN/ERROR lines (first 10):"
        echo "$TLS_WARN_LINES"
    fi
    if (( ${#problems[@]} > 0 )); then
        for p in "${problems[@]}"; do echo "PROBLEM: $p" >&2; done
        die "the run is not valid (see PROBLEM lines)"
    fi
    q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
       WHERE slot_name IN ('walhook', 'walhook_tls')" >/dev/null
    NGINX_HTTP_RATE=$WALHOOK_RATE NGINX_HTTP_DELIVERED_RATE=$DELIVERED_RATE NGINX_RECV_RATE=$RECV_RATE
    NGINX_HTTP_PHASE_RATE=$PHASE_RATE
    # CPU per change of the http run, for section wrk's ceiling.
    NGINX_HTTP_US=$(awk -v c="$WALHOOK_CPU" -v n="$EXPECTED" 'BEGIN { printf "%.1f", c * 1e6 / n }')
    [[ $WALSENDER_CPU =~ ^[0-9.]+$ ]] || die "nginx: the walsender's CPU could not be measured"
    NGINX_WALSENDER_US=$(awk -v c="$WALSENDER_CPU" -v n="$EXPECTED" 'BEGIN { printf "%.1f", c * 1e6 / n }')
    summary nginx "walhook -> nginx, http" "$WALHOOK_RATE changes/s" "pg_recvlogical $RECV_RATE/s (ratio $RATIO)" "$(( WALHOOK_HWM / 1024 )) MiB"
    summary nginx "  receiver-side (no confirm delay)" "$DELIVERED_RATE changes/s" "ratio $DELIVERED_RATIO" ""
    if [[ -n $PHASE_RATE ]]; then
        summary nginx "  first to last request" "$PHASE_RATE changes/s" "first request after ${FIRST_SECONDS} s" ""
    fi
    summary nginx "  machine during the http run" "${MACHINE_BUSY%% (*}" "(${MACHINE_BUSY#*(}" ""
    NGINX_MACHINE_BUSY=$MACHINE_BUSY
    if (( HTTPS )); then
        summary nginx "walhook -> nginx, https" "$TLS_WALHOOK_RATE changes/s" "pg_recvlogical $RECV_RATE/s (ratio $TLS_RATIO)" "$(( TLS_WALHOOK_HWM / 1024 )) MiB"
    fi
}

# ------------------------------------------------------- section helpers

SUMMARY=()
# summary SECTION FIGURE VALUE REFERENCE PEAK_RSS: one row of the final table.
summary() {
    SUMMARY+=("$(printf '%-8s %-44s %-30s %-46s %s' "$1" "$2" "$3" "$4" "$5")")
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "?" }'; }

# wait_until SECONDS WHAT CMD...: run CMD every 50 ms until it succeeds; die
# naming WHAT when SECONDS have passed, or at once when walhook has exited.
wait_until() {
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$(( SECONDS + limit ))
    until "$@"; do
        if [[ -n $WALHOOK_PID ]] && ! kill -0 "$WALHOOK_PID" 2>/dev/null; then
            die "walhook exited while waiting for: $what (see its log below)"
        fi
        (( SECONDS < deadline )) || die "$what did not happen within ${limit}s"
        nap 0.05
    done
}

# install NAME TABLE [EXTRA_DELIVERY]: an installation (schema, slot and
# publication NAME) capturing public.TABLE alone, configured in $TMP/NAME.toml.
install() {
    walhook_config "$1" "${3:-}" "$2" >"$TMP/$1.toml"
    "$WALHOOK" -c "$TMP/$1.toml" setup >"$TMP/$1.setup.log" 2>&1 \
        || { cat "$TMP/$1.setup.log" >&2; die "walhook setup failed ($1)"; }
    SECTION_LOGS+=("$1.log")
}
# The publications of installation NAME, comma-separated (for pg_recvlogical).
publications_of() {
    q "SELECT string_agg(pubname, ',' ORDER BY pubname) FROM pg_publication
        WHERE pubname = '$1' OR pubname LIKE '$1\_%'"
}
# add_hook SCHEMA NAME URL STATE: a hook for every event; prints its webhook_id.
add_hook() {
    local id
    id=$(q "INSERT INTO $1.webhook (name, events, target_url, secret, state)
            VALUES ('$2', '*', '$3', 'bench-secret', $4) RETURNING webhook_id" | head -n1)
    [[ $id =~ ^[0-9]+$ ]] || die "registering webhook '$2' in $1 failed"
    echo "$id"
}
slot_at() {
    pq "SELECT confirmed_flush_lsn >= '$2'::pg_lsn FROM pg_replication_slots
         WHERE slot_name = '$1'" && [[ $PQ_OUT == t ]]
}
slot_active() {
    pq "SELECT active FROM pg_replication_slots WHERE slot_name = '$1'" && [[ $PQ_OUT == t ]]
}
drop_slot() {
    q "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$1'" >/dev/null
}
# run_recvlogical SLOT PUBLICATIONS END_LSN: pg_recvlogical from SLOT to
# END_LSN; sets RECV_SECONDS.
run_recvlogical() {
    local t0 rc
    t0=$(now)
    set +e
    timeout "$RECVLOGICAL_TIMEOUT" "$RECVLOGICAL_BIN" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench \
        --slot="$1" --start --endpos="$3" --no-loop -o proto_version=1 -o publication_names="$2" \
        -f /dev/null >"$TMP/$1.recvlogical.log" 2>&1
    rc=$?
    set -e
    (( rc != 124 )) || die "pg_recvlogical ($1) did not reach $3 within ${RECVLOGICAL_TIMEOUT}s"
    (( rc == 0 )) || { cat "$TMP/$1.recvlogical.log" >&2; die "pg_recvlogical ($1) exited with $rc"; }
    RECV_SECONDS=$(elapsed "$t0" "$(now)")
    slot_at "$1" "$3" || die "pg_recvlogical ($1) exited but its slot did not reach $3"
}

# start_walhook NAME: `walhook run` of installation NAME, its log appended
# to $TMP/NAME.log.
start_walhook() {
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$WALHOOK" -c "$TMP/$1.toml" run >>"$TMP/$1.log" 2>&1 &
    WALHOOK_PID=$!
}
# Peak RSS of the running walhook, in kB.
walhook_hwm() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$WALHOOK_PID/status" 2>/dev/null \
        || die "cannot read walhook's peak RSS (/proc/$WALHOOK_PID/status)"
}
# stop_walhook NAME: SIGTERM; dies unless walhook exits 0 within 30 s.
stop_walhook() {
    local rc
    kill -TERM "$WALHOOK_PID" 2>/dev/null || die "walhook ($1) was not running at its stop"
    wait_exit "$WALHOOK_PID" 30 || die "walhook ($1) did not exit within 30 s of SIGTERM"
    set +e
    wait "$WALHOOK_PID"
    rc=$?
    set -e
    WALHOOK_PID=""
    (( rc == 0 )) || die "walhook ($1) exited with status $rc after SIGTERM"
}
# usage_errors SCHEMA: total_errors over all hooks of an installation.
usage_errors() { q "SELECT coalesce(sum(total_errors), 0) FROM $1.webhook_usage"; }

# start_sink NAME ARGS...: walhook-sink on a free port with ARGS; sets
# SINK_BASE (the URL hooks point under) and SINK_EXTRA (walhook's
# [delivery] lines for it: the CA of its certificate over https).
start_sink() {
    local name=$1 addr tls=()
    shift
    SINK_EXTRA=""
    if (( SINK_TLS )); then
        tls=(--tls-cert "$TMP/nginx/tls/cert.pem" --tls-key "$TMP/nginx/tls/key.pem")
        SINK_EXTRA="ca_file = \"$TMP/nginx/tls/cert.pem\""
    fi
    "$SINK_BIN" --listen 127.0.0.1:0 "${tls[@]}" "$@" >"$TMP/$name.sink.out" 2>"$TMP/$name.sink.err" &
    SINK_PID=$!
    SECTION_LOGS+=("$name.sink.err")
    wait_until 15 "walhook-sink ($name) listening" grep -q '^listening on ' "$TMP/$name.sink.out"
    addr=$(awk '/^listening on / { print $3; exit }' "$TMP/$name.sink.out")
    SINK_PORT=${addr##*:}
    if (( SINK_TLS )); then SINK_BASE="https://localhost:$SINK_PORT"; else SINK_BASE="http://$addr"; fi
    say "walhook-sink ($name) at $SINK_BASE $*"
}
# sink_fetch: the sink's /stats into SINK_STATS (counter -> value); fails
# when the sink does not answer. Over http it does not fork, as it is polled
# while walhook is timed; over https (SINK_TLS=1) curl reads it.
declare -A SINK_STATS=()
sink_fetch() {
    local body key value
    SINK_STATS=()
    if (( SINK_TLS )); then
        body=$(curl -s --max-time 5 --cacert "$TMP/nginx/tls/cert.pem" "$SINK_BASE/stats" 2>/dev/null) || return 1
    else
        http_get "$SINK_PORT" /stats || return 1
        body=$HTTP_BODY
    fi
    while read -r key value; do
        if [[ -n $key ]]; then SINK_STATS[$key]=$value; fi
    done <<<"$body"
    (( ${#SINK_STATS[@]} > 0 ))
}
# sink_stat KEY: a counter of the sink's /stats (empty when it cannot be read).
sink_stat() {
    if sink_fetch; then echo "${SINK_STATS[$1]:-}"; fi
}
# sink_seconds_since EPOCH KEY: seconds from EPOCH (Unix seconds) to the
# sink's time KEY (Unix microseconds); dies when the sink has none.
sink_seconds_since() {
    local us
    us=$(sink_stat "$2")
    [[ $us =~ ^[1-9][0-9]*$ ]] || die "walhook-sink's /stats has no $2 (got '$us')"
    [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "not a time: '$1'"
    awk -v a="$1" -v b="$us" 'BEGIN { printf "%.3f", b / 1e6 - a }'
}
sink_at_least() {
    sink_fetch && [[ ${SINK_STATS[requests]:-} =~ ^[0-9]+$ ]] && (( SINK_STATS[requests] >= $1 ))
}
sink_requests() {
    local n
    n=$(sink_stat requests)
    [[ $n =~ ^[0-9]+$ ]] || die "walhook-sink does not answer GET $SINK_BASE/stats"
    echo "$n"
}
# stop_sink: dies when the sink rejected a request or could not log one.
stop_sink() {
    local rejected log_errors
    rejected=$(sink_stat rejected)
    log_errors=$(sink_stat log_errors)
    [[ $rejected == 0 && $log_errors == 0 ]] \
        || die "walhook-sink rejected ${rejected:-?} requests and failed to log ${log_errors:-?} (see its log below)"
    kill -TERM "$SINK_PID" 2>/dev/null
    wait_exit "$SINK_PID" 5 || kill -KILL "$SINK_PID" 2>/dev/null
    SINK_PID=""
}

# run_pgbench NAME SQL RATE SECONDS [PGBENCH ARGS]: single-statement
# transactions of SQL at RATE per second for SECONDS; dies when pgbench fails.
run_pgbench() {
    local name=$1 sql=$2 rate=$3 secs=$4
    shift 4
    printf '%s\n' "$sql" >"$TMP/$name.pgbench.sql"
    "$PGBENCH_BIN" -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 4 -j 2 -R "$rate" -T "$secs" \
        -f "$TMP/$name.pgbench.sql" "$@" bench >"$TMP/$name.pgbench.log" 2>&1 \
        || { tail -n 20 "$TMP/$name.pgbench.log" >&2; die "pgbench ($name) failed"; }
}

q "CREATE TABLE bench_result.arrival (arrival_us bigint NOT NULL, event_id uuid NOT NULL, value text NOT NULL)"
# latency_of FILE: "count p50 p99 max" (ms) of arrival - the row's
# clock_timestamp() over the sink's lines "arrival_us event_id ts".
latency_of() {
    local row
    q "TRUNCATE bench_result.arrival" >/dev/null
    psql_do -d bench -c "\\copy bench_result.arrival FROM '$1' WITH (FORMAT csv, DELIMITER ' ')" >/dev/null \
        || die "cannot load the sink's log $1"
    row=$(q "SELECT count(*), round(percentile_disc(0.5) WITHIN GROUP (ORDER BY d) / 1000.0, 1),
                    round(percentile_disc(0.99) WITHIN GROUP (ORDER BY d) / 1000.0, 1),
                    round(max(d) / 1000.0, 1)
               FROM (SELECT arrival_us - (extract(epoch FROM value::timestamptz) * 1000000)::bigint AS d
                       FROM bench_result.arrival) AS s" | tr '|' ' ')
    [[ ${row%% *} =~ ^[1-9][0-9]*$ ]] || die "no latency samples in $1"
    echo "$row"
}

# ----------------------------------------------------- section decode
#
# No hook: walhook decodes DECODE_ROWS inserts (one transaction) and
# DECODE_UPDATES updates (another) and confirms the end, against
# pg_recvlogical on its own slot over the same WAL.
section_decode() {
    local n=$(( DECODE_ROWS + DECODE_UPDATES )) end t0 secs hwm recv_rate walhook_rate
    q "CREATE TABLE bench_decode (id int PRIMARY KEY, n int NOT NULL, label text NOT NULL)" >/dev/null
    install wh_decode bench_decode
    q "SELECT pg_create_logical_replication_slot('bench_recv_decode', 'pgoutput')" >/dev/null
    say "decode: $DECODE_ROWS inserts + $DECODE_UPDATES updates, no reader running"
    q "INSERT INTO bench_decode SELECT g, g, 'item ' || g FROM generate_series(1, $DECODE_ROWS) AS g" >/dev/null
    q "UPDATE bench_decode SET n = n + 1, label = label || ' upd' WHERE id <= $DECODE_UPDATES" >/dev/null
    end=$(q "SELECT pg_current_wal_lsn()")
    run_recvlogical bench_recv_decode "$(publications_of wh_decode)" "$end"
    drop_slot bench_recv_decode
    recv_rate=$(rate "$n" "$RECV_SECONDS")
    say "decode: pg_recvlogical ${RECV_SECONDS}s, $recv_rate changes/s"
    t0=$(now)
    start_walhook wh_decode
    wait_until "$WALHOOK_TIMEOUT" "walhook (decode, no hook) confirming $end" slot_at wh_decode "$end"
    secs=$(elapsed "$t0" "$(now)")
    hwm=$(walhook_hwm)
    DECODE_US=$(awk -v c="$(cpu_seconds "$WALHOOK_PID")" -v n="$n" 'BEGIN { printf "%.1f", c * 1e6 / n }')
    stop_walhook decode
    drop_slot wh_decode
    walhook_rate=$(rate "$n" "$secs")
    say "decode: walhook ${secs}s, $walhook_rate changes/s"
    DECODE_RATE=$walhook_rate
    summary decode "walhook, no hook ($n changes)" "$walhook_rate changes/s" \
        "pg_recvlogical $recv_rate/s (ratio $(ratio "$walhook_rate" "$recv_rate"))" "$(( hwm / 1024 )) MiB"
}

# -------------------------------------------------------- section wrk
#
# The HTTP ceiling: wrk POSTing a body of walhook's shape and size to the
# same nginx location, WRK_CONNECTIONS connections kept alive.
section_wrk() {
    local body threads rps label pad ng_before ng_after children_before wrk_cpu requests machine_before h
    local -a headers
    # A bench_item.changed body as walhook sends it, its label padded so the
    # body is about 600 bytes.
    label="item 4242 upd"
    body='{"EventId":"6f0c1d7e-5c1a-5f0e-9a3b-1c2d3e4f5a6b","Timestamp":"2026-01-01T08:00:00.123456Z","Changes":["id","n","label"],"ChangesExact":false,"Event":"bench_item.changed","PrimaryKey":4242,"Entity":"bench_item","ContextIdentifier":"Default","ChangedByAssociateId":0,"WebhookName":"bench","FieldValues":{"id":4242,"n":4243,"label":"LABEL"},"MissingColumns":[],"Table":"public.bench_item","Lsn":"0/16B3748"}'
    pad=$(( 600 - ${#body} + 5 - ${#label} ))
    (( pad > 0 )) && label="$label $(printf '%*s' "$pad" '' | tr ' ' 'x')"
    body=${body/LABEL/$label}
    printf '%s' "$body" >"$TMP/wrk-body.json"
    # The headers walhook sends, with values of their usual length.
    headers=(
        "Content-Type: application/json; charset=utf-8"
        "User-Agent: walhook/0.1.0"
        "X-SuperOffice-Event: bench_item.changed"
        "X-SuperOffice-EventId: 6f0c1d7e-5c1a-5f0e-9a3b-1c2d3e4f5a6b"
        "X-SuperOffice-Retry: 0"
        "X-SuperOffice-Signature: Nq8Yp3b2n0cD9m0ZQe5oYkXh0c3mQyVq1J0b2y7s8pE="
        "webhook-id: 6f0c1d7e-5c1a-5f0e-9a3b-1c2d3e4f5a6b"
        "webhook-timestamp: 1767254400"
        "webhook-signature: v1,Kq3Yp3b2n0cD9m0ZQe5oYkXh0c3mQyVq1J0b2y7s8pE="
    )
    {
        echo 'wrk.method = "POST"'
        echo "local f = assert(io.open(\"$TMP/wrk-body.json\", \"rb\"))"
        echo 'wrk.body = f:read("*a")'
        echo 'f:close()'
        for h in "${headers[@]}"; do
            printf 'wrk.headers["%s"] = "%s"\n' "${h%%: *}" "${h#*: }"
        done
    } >"$TMP/wrk.lua"
    threads=$(( WRK_CONNECTIONS < 2 ? WRK_CONNECTIONS : 2 ))
    say "wrk: ${WRK_SECONDS}s, $WRK_CONNECTIONS connections, ${#body}-byte body to $HOOK_URL"
    # CPU per request of nginx and of wrk itself (a minimal client): with
    # walhook's own CPU per change from section nginx, what two cores allow.
    ng_before=$(nginx_cpu)
    children_cpu
    children_before=$CHILDREN_CPU
    machine_before=$(machine_ticks)
    wrk -t "$threads" -c "$WRK_CONNECTIONS" -d "${WRK_SECONDS}s" -s "$TMP/wrk.lua" "$HOOK_URL" \
        >"$TMP/wrk.log" 2>&1 || { cat "$TMP/wrk.log" >&2; die "wrk failed"; }
    WRK_MACHINE_BUSY=$(machine_busy "$machine_before" "$(machine_ticks)")
    children_cpu
    wrk_cpu=$(awk -v a="$children_before" -v b="$CHILDREN_CPU" 'BEGIN { printf "%.2f", b - a }')
    ng_after=$(nginx_cpu)
    ! grep -q -E 'Non-2xx|Socket errors' "$TMP/wrk.log" \
        || { cat "$TMP/wrk.log" >&2; die "wrk saw failed requests (see its output above)"; }
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$TMP/wrk.log")
    [[ $rps =~ ^[0-9]+$ ]] && (( rps > 0 )) || { cat "$TMP/wrk.log" >&2; die "wrk reported no request rate"; }
    requests=$(awk '/requests in/ { print $1; exit }' "$TMP/wrk.log")
    [[ $requests =~ ^[0-9]+$ ]] && (( requests > 0 )) || { cat "$TMP/wrk.log" >&2; die "wrk reported no request count"; }
    WRK_US=$(awk -v c="$wrk_cpu" -v n="$requests" 'BEGIN { printf "%.1f", c * 1e6 / n }')
    WRK_NGINX_US=$(awk -v a="$ng_before" -v b="$ng_after" -v n="$requests" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
    say "wrk: $rps requests/s; CPU per request: wrk $WRK_US us, nginx $WRK_NGINX_US us; machine: $WRK_MACHINE_BUSY"
    WRK_RATE=$rps
    post_run
    if [[ -n ${NGINX_HTTP_RATE:-} && -n ${DECODE_US:-} ]]; then
        summary wrk "wrk -> nginx (${#body} B, ${WRK_CONNECTIONS} conns)" "$rps requests/s" \
            "walhook/wrk $(ratio "$NGINX_HTTP_RATE" "$rps") (receiver-side $(ratio "$NGINX_HTTP_DELIVERED_RATE" "$rps")${NGINX_HTTP_PHASE_RATE:+, first to last $(ratio "$NGINX_HTTP_PHASE_RATE" "$rps")})" ""
        # Two cores shared by nginx, the walsender and the client: the
        # rate at which they would be saturated with walhook as the client,
        # and with a client as lean as wrk that still decodes and signs
        # (walhook's CPU per change in section decode).
        summary wrk "  CPU per request (us)" "wrk $WRK_US, nginx $WRK_NGINX_US" \
            "walhook $NGINX_HTTP_US, its walsender $NGINX_WALSENDER_US, decode only $DECODE_US" ""
        summary wrk "  2 cores saturated at" \
            "$(awk -v w="$NGINX_HTTP_US" -v n="$WRK_NGINX_US" -v s="$NGINX_WALSENDER_US" 'BEGIN { printf "%.0f", 2e6 / (w + n + s) }')/s (walhook)" \
            "$(awk -v w="$WRK_US" -v d="$DECODE_US" -v n="$WRK_NGINX_US" -v s="$NGINX_WALSENDER_US" 'BEGIN { printf "%.0f", 2e6 / (w + d + n + s) }')/s (wrk-lean client + decode)" ""
        summary wrk "  machine during wrk" "${WRK_MACHINE_BUSY%% (*}" "(${WRK_MACHINE_BUSY#*(}" ""
        summary wrk "hyper client alone (${POST_CONCURRENCY} in flight)" "$POST_RATE requests/s" \
            "walhook/it $(ratio "$NGINX_HTTP_RATE" "$POST_RATE"), it/wrk $(ratio "$POST_RATE" "$rps")" ""
    else
        summary wrk "wrk -> nginx (${#body} B, ${WRK_CONNECTIONS} conns)" "$rps requests/s" "walhook/wrk: run sections decode and nginx too" ""
        summary wrk "hyper client alone (${POST_CONCURRENCY} in flight)" "$POST_RATE requests/s" "it/wrk $(ratio "$POST_RATE" "$rps")" ""
    fi
    summary wrk "  CPU per request (us)" "it $POST_US, nginx $POST_NGINX_US" "machine: ${POST_MACHINE_BUSY%% (*}" ""
}

# post_run: the same POSTs as wrk's, from walhook-post: walhook's HTTP
# client stack (hyper's HTTP/1.1 connections, driven in lanes as walhook's
# are) with POST_CONCURRENCY requests in flight and none of walhook's own
# work per request. Sets POST_RATE,
# POST_US (its CPU per request), POST_NGINX_US and POST_MACHINE_BUSY.
post_run() {
    local args=() h line requests secs cpu failed ng_before ng_after machine_before
    args=(--body-file "$TMP/wrk-body.json" --concurrency "$POST_CONCURRENCY" --seconds "$WRK_SECONDS")
    for h in "${headers[@]}"; do args+=(--header "$h"); done
    say "walhook-post: ${WRK_SECONDS}s, $POST_CONCURRENCY requests in flight, the same body and headers to $HOOK_URL"
    ng_before=$(nginx_cpu)
    machine_before=$(machine_ticks)
    "$POST_BIN" "${args[@]}" "$HOOK_URL" >"$TMP/post.log" 2>&1 \
        || { cat "$TMP/post.log" >&2; die "walhook-post failed"; }
    POST_MACHINE_BUSY=$(machine_busy "$machine_before" "$(machine_ticks)")
    ng_after=$(nginx_cpu)
    line=$(grep '^requests ' "$TMP/post.log" || true)
    read -r _ requests _ secs _ cpu _ failed <<<"$line"
    [[ ${requests:-} =~ ^[0-9]+$ ]] && (( requests > 0 )) && [[ ${secs:-} =~ ^[0-9.]+$ && ${cpu:-} =~ ^[0-9.]+$ ]] \
        || { cat "$TMP/post.log" >&2; die "walhook-post reported no request count"; }
    [[ $failed == 0 ]] || { cat "$TMP/post.log" >&2; die "walhook-post: $failed requests were not answered 2xx"; }
    POST_RATE=$(awk -v n="$requests" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
    POST_US=$(awk -v c="$cpu" -v n="$requests" 'BEGIN { printf "%.1f", c * 1e6 / n }')
    POST_NGINX_US=$(awk -v a="$ng_before" -v b="$ng_after" -v n="$requests" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
    say "walhook-post: $POST_RATE requests/s; CPU per request: it $POST_US us, nginx $POST_NGINX_US us; machine: $POST_MACHINE_BUSY"
}

# ------------------------------------------------------- section slow
#
# One hook whose target answers every request after SLOW_DELAY_MS; SLOW_ROWS
# new rows in one transaction, timed from its commit until the sink
# answered them all. Both ends are clock readings, not polls: PostgreSQL's
# clock right after the COMMIT, and the sink's own record of its last answer.
section_slow() {
    local committed secs first hwm r ceiling errors
    q "CREATE TABLE bench_slow (id int PRIMARY KEY, n int NOT NULL, label text NOT NULL)" >/dev/null
    start_sink slow --delay-ms "$SLOW_DELAY_MS"
    install wh_slow bench_slow "$SINK_EXTRA"
    add_hook wh_slow slow "$SINK_BASE/slow" 1 >/dev/null
    start_walhook wh_slow
    wait_until 60 "walhook (slow) streaming from its slot" slot_active wh_slow
    say "slow: $SLOW_ROWS rows in one transaction, target answering after ${SLOW_DELAY_MS} ms"
    committed=$(q "BEGIN; INSERT INTO bench_slow SELECT g, g, 'item ' || g FROM generate_series(1, $SLOW_ROWS) AS g; COMMIT; SELECT extract(epoch FROM clock_timestamp())")
    wait_until "$WALHOOK_TIMEOUT" "the slow target answering all $SLOW_ROWS requests" sink_at_least "$SLOW_ROWS"
    secs=$(sink_seconds_since "$committed" last_answer_us)
    first=$(sink_seconds_since "$committed" first_arrival_us)
    hwm=$(walhook_hwm)
    stop_walhook slow
    errors=$(usage_errors wh_slow)
    (( errors == 0 )) || die "slow: webhook_usage counts $errors errors"
    stop_sink
    drop_slot wh_slow
    r=$(rate "$SLOW_ROWS" "$secs")
    ceiling="no delay"
    (( SLOW_DELAY_MS > 0 )) && ceiling="$(( CONCURRENCY_MAX * 1000 / SLOW_DELAY_MS ))/s at concurrency $CONCURRENCY_MAX"
    say "slow: ${secs}s, $r changes/s; the first request arrived $(awk -v s="$first" 'BEGIN { printf "%.0f", s * 1000 }') ms after the commit"
    summary slow "${SLOW_DELAY_MS} ms target, $SLOW_ROWS rows in 1 tx" "$r changes/s" "ceiling $ceiling" "$(( hwm / 1024 )) MiB"
}

# ---------------------------------------------------- section latency
#
# Single-row transactions at LATENCY_RATE per second for LATENCY_SECONDS,
# each row carrying clock_timestamp(); the sink logs when each arrived.
section_latency() {
    local rows hwm stats
    q "CREATE TABLE bench_lat (id bigserial PRIMARY KEY, ts timestamptz NOT NULL,
                               label text NOT NULL DEFAULT 'latency probe')" >/dev/null
    start_sink latency --log "$TMP/latency.arrivals" --field ts
    install wh_latency bench_lat "$SINK_EXTRA"
    add_hook wh_latency latency "$SINK_BASE/latency" 1 >/dev/null
    start_walhook wh_latency
    wait_until 60 "walhook (latency) streaming from its slot" slot_active wh_latency
    say "latency: $LATENCY_RATE single-row transactions/s for ${LATENCY_SECONDS}s"
    run_pgbench latency "INSERT INTO bench_lat (ts) VALUES (clock_timestamp());" \
        "$LATENCY_RATE" "$LATENCY_SECONDS"
    rows=$(q "SELECT count(*) FROM bench_lat")
    (( rows > 0 )) || die "latency: pgbench committed no row"
    wait_until 120 "the sink receiving all $rows latency probes" sink_at_least "$rows"
    hwm=$(walhook_hwm)
    stop_walhook latency
    stop_sink
    drop_slot wh_latency
    read -r n p50 p99 max <<<"$(latency_of "$TMP/latency.arrivals")"
    [[ ${n:-} =~ ^[0-9]+$ ]] || die "latency: the latency could not be measured (see above)"
    say "latency: $n samples, p50 $p50 ms, p99 $p99 ms, max $max ms"
    summary latency "commit->receipt at $(rate "$rows" "$LATENCY_SECONDS") tx/s" "p50 $p50 ms, p99 $p99 ms" "max $max ms, $n samples" "$(( hwm / 1024 )) MiB"
}

# ----------------------------------------------------- section parked
#
# The healthy hook's backlog rate (PARKED_ROWS rows in one transaction) and
# latency (LATENCY_RATE single-row transactions/s for PARKED_LAT_SECONDS)
# beside k hooks in state 3 (TooManyErrors: every change is parked for
# them), for each k in PARKED_HOOKS; the delivery table and WAL bytes per
# parked event; then the replay of REPLAY_EVENTS parked events of one hook.
section_parked() {
    local k g end t0 secs hwm lsn_a lsn_b parked expect_parked table_bytes wal_bytes base lines r
    local replay_hook delivered
    q "CREATE TABLE bench_parked (id bigserial PRIMARY KEY, ts timestamptz NOT NULL,
                                  label text NOT NULL DEFAULT 'an item of the parked workload')" >/dev/null
    start_sink parked --log "$TMP/parked.arrivals" --field ts
    install wh_parked bench_parked "$SINK_EXTRA"
    add_hook wh_parked healthy "$SINK_BASE/healthy" 1 >/dev/null
    for k in $PARKED_HOOKS; do
        # walhook is stopped: the table starts empty for each case, so its
        # size is this case's parked events alone.
        q "TRUNCATE wh_parked.delivery, wh_parked.delivery_payload; DELETE FROM wh_parked.webhook WHERE name LIKE 'parked %'" >/dev/null
        if (( k > 0 )); then
            q "INSERT INTO wh_parked.webhook (name, events, target_url, secret, state)
               SELECT 'parked ' || g, '*', '$SINK_BASE/parked' || g, 'bench-secret', 3
                 FROM generate_series(1, $k) AS g" >/dev/null
        fi
        q "INSERT INTO bench_parked (ts) SELECT clock_timestamp() FROM generate_series(1, $PARKED_ROWS)" >/dev/null
        end=$(q "SELECT pg_current_wal_lsn()")
        base=$(sink_requests)
        lsn_a=$end
        say "parked: $k hooks in state 3; catching up with $PARKED_ROWS changes"
        t0=$(now)
        start_walhook wh_parked
        wait_until "$WALHOOK_TIMEOUT" "the healthy hook receiving $PARKED_ROWS changes ($k parked hooks)" \
            sink_at_least $(( base + PARKED_ROWS ))
        wait_until "$WALHOOK_TIMEOUT" "walhook confirming $end ($k parked hooks)" slot_at wh_parked "$end"
        secs=$(elapsed "$t0" "$(now)")
        expect_parked=$(( k * PARKED_ROWS ))
        parked=$(q "SELECT count(*) FROM wh_parked.delivery")
        (( parked == expect_parked )) || die "parked: $parked events parked, expected $expect_parked ($k hooks in state 3)"
        lsn_b=$(q "SELECT pg_current_wal_lsn()")
        wal_bytes=$(q "SELECT pg_wal_lsn_diff('$lsn_b', '$lsn_a')")
        table_bytes=$(q "SELECT pg_total_relation_size('wh_parked.delivery')
                              + pg_total_relation_size('wh_parked.delivery_payload')")
        r=$(rate "$PARKED_ROWS" "$secs")
        # The latency of the healthy hook while the others park.
        lines=$(wc -l <"$TMP/parked.arrivals")
        base=$(sink_requests)
        g=$(q "SELECT count(*) FROM bench_parked")
        run_pgbench parked "INSERT INTO bench_parked (ts) VALUES (clock_timestamp());" \
            "$LATENCY_RATE" "$PARKED_LAT_SECONDS"
        g=$(( $(q "SELECT count(*) FROM bench_parked") - g ))
        (( g > 0 )) || die "parked: pgbench committed no row ($k parked hooks)"
        end=$(q "SELECT pg_current_wal_lsn()")
        wait_until 120 "the healthy hook receiving the steady workload ($k parked hooks)" \
            sink_at_least $(( base + g ))
        wait_until 120 "walhook confirming $end ($k parked hooks)" slot_at wh_parked "$end"
        tail -n +$(( lines + 1 )) "$TMP/parked.arrivals" >"$TMP/parked-$k.arrivals"
        read -r n p50 p99 max <<<"$(latency_of "$TMP/parked-$k.arrivals")"
        [[ ${n:-} =~ ^[0-9]+$ ]] || die "parked: the latency could not be measured (see above)"
        hwm=$(walhook_hwm)
        stop_walhook "parked, $k hooks"
        say "parked: $k hooks: $r changes/s, p99 $p99 ms; $parked parked"
        summary parked "healthy hook + $k hook(s) in state 3" "$r changes/s, p99 $p99 ms" \
            "p50 $p50 ms at $(rate "$g" "$PARKED_LAT_SECONDS") tx/s" "$(( hwm / 1024 )) MiB"
        if (( k > 0 )); then
            summary parked "  bytes per parked event ($k hook(s))" "table $(( table_bytes / parked )) B" \
                "WAL $(( wal_bytes / parked )) B (walhook's writes)" ""
        fi
    done

    # Replay: one hook in state 3 collects REPLAY_EVENTS parked events, then
    # goes back to 1; timed until the delivery table holds none of its rows
    # and the sink counted them all.
    q "TRUNCATE wh_parked.delivery, wh_parked.delivery_payload; DELETE FROM wh_parked.webhook WHERE name LIKE 'parked %'" >/dev/null
    replay_hook=$(add_hook wh_parked "parked replay" "$SINK_BASE/replay" 3)
    q "INSERT INTO bench_parked (ts) SELECT clock_timestamp() FROM generate_series(1, $REPLAY_EVENTS)" >/dev/null
    end=$(q "SELECT pg_current_wal_lsn()")
    base=$(sink_requests)
    say "parked: parking $REPLAY_EVENTS events for webhook $replay_hook"
    start_walhook wh_parked
    wait_until "$WALHOOK_TIMEOUT" "the healthy hook receiving $REPLAY_EVENTS changes (replay setup)" \
        sink_at_least $(( base + REPLAY_EVENTS ))
    wait_until "$WALHOOK_TIMEOUT" "walhook confirming $end (replay setup)" slot_at wh_parked "$end"
    parked=$(q "SELECT count(*) FROM wh_parked.delivery WHERE webhook_id = $replay_hook")
    (( parked == REPLAY_EVENTS )) || die "replay: $parked events parked for webhook $replay_hook, expected $REPLAY_EVENTS"
    base=$(sink_requests)
    say "parked: webhook $replay_hook back to state 1; replaying $REPLAY_EVENTS events"
    t0=$(now)
    q "UPDATE wh_parked.webhook SET state = 1 WHERE webhook_id = $replay_hook" >/dev/null
    replay_done() {
        sink_at_least $(( base + REPLAY_EVENTS )) \
            && pq "SELECT count(*) FROM wh_parked.delivery WHERE webhook_id = $replay_hook" && [[ $PQ_OUT == 0 ]]
    }
    wait_until "$WALHOOK_TIMEOUT" "the replay of $REPLAY_EVENTS parked events" replay_done
    secs=$(elapsed "$t0" "$(now)")
    delivered=$(( $(sink_requests) - base ))
    (( delivered == REPLAY_EVENTS )) || die "replay: the sink counted $delivered requests, expected $REPLAY_EVENTS"
    hwm=$(walhook_hwm)
    stop_walhook "parked, replay"
    (( $(usage_errors wh_parked) == 0 )) || die "parked: webhook_usage counts errors"
    stop_sink
    drop_slot wh_parked
    r=$(rate "$REPLAY_EVENTS" "$secs")
    say "parked: replay ${secs}s, $r events/s"
    summary parked "replay of $REPLAY_EVENTS parked events" "$r events/s" "${secs} s until none left" "$(( hwm / 1024 )) MiB"
}

# ------------------------------------------------------ section crash
#
# Single-row transactions at CRASH_RATE per second while walhook is killed
# (kill -9, restarted at once) CRASH_KILLS times; then again with a fast
# PostgreSQL restart, an immediate one and a terminated walsender mixed in.
# The sink logs the EventId and row id of every delivery: every committed
# row must have arrived, and duplicates are counted per change.

# The load: pgbench in short runs until $TMP/crash.stop exists, so that a
# run cut by a PostgreSQL restart is followed by the next one.
crash_load() {
    while [[ ! -e $TMP/crash.stop ]]; do
        "$PGBENCH_BIN" -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 2 -j 1 -R "$CRASH_RATE" -T 3 \
            -D "phase=$(cat "$TMP/crash.phase")" -f "$TMP/crash.pgbench.sql" bench \
            >>"$TMP/crash.pgbench.log" 2>&1 || sleep 0.2
    done
}
stop_load() {
    touch "$TMP/crash.stop"
    wait_exit "$LOAD_PID" 15 || { pkill -KILL -P "$LOAD_PID"; kill -KILL "$LOAD_PID"; } 2>/dev/null
    LOAD_PID=""
}

CRASH_HWM=0
CRASH_EXITS=0
# Restart walhook when it has exited on its own (as systemd's
# Restart=on-failure would); such exits are counted and reported.
crash_keep_walhook() {
    if ! kill -0 "$WALHOOK_PID" 2>/dev/null; then
        wait "$WALHOOK_PID" 2>/dev/null || true
        CRASH_EXITS=$(( CRASH_EXITS + 1 ))
        say "crash: walhook exited on its own; restarting it"
        start_walhook wh_crash
    fi
}
crash_note_hwm() {
    local h
    h=$(awk '/^VmHWM:/ { print $2 }' "/proc/$WALHOOK_PID/status" 2>/dev/null || echo 0)
    (( h > CRASH_HWM )) && CRASH_HWM=$h
    return 0
}
pg_restart() {
    say "crash: PostgreSQL stop -m $1, then start"
    as_pg "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -m "$1" -w -t 60 stop >/dev/null \
        || die "pg_ctl stop -m $1 failed"
    as_pg "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/postgres.log" -o "-p $PG_PORT" -w -t 120 start >/dev/null \
        || die "PostgreSQL did not start again after stop -m $1"
}
# crash_step ACTION: wait until walhook delivers again since the last step,
# let it run CRASH_INTERVAL seconds, then do ACTION.
crash_step() {
    local base deadline=$(( SECONDS + 120 ))
    base=$(sink_requests)
    until sink_at_least $(( base + 1 )); do
        crash_keep_walhook
        (( SECONDS < deadline )) || die "crash: no delivery within 120 s of the previous disturbance"
        nap 0.05
    done
    sleep "$CRASH_INTERVAL"  # the disturbance lands mid-stream, at an arbitrary point
    crash_keep_walhook
    crash_note_hwm
    case $1 in
        kill)
            kill -KILL "$WALHOOK_PID"
            wait "$WALHOOK_PID" 2>/dev/null || true
            start_walhook wh_crash
            ;;
        fast|immediate)
            pg_restart "$1"
            ;;
        walsender)
            deadline=$(( SECONDS + 60 ))
            until slot_active wh_crash; do
                crash_keep_walhook
                (( SECONDS < deadline )) || die "crash: walhook's slot not active within 60 s"
                nap 0.05
            done
            say "crash: pg_terminate_backend(walsender of wh_crash)"
            q "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                WHERE slot_name = 'wh_crash' AND active_pid IS NOT NULL" >/dev/null
            ;;
    esac
}

section_crash() {
    local i steps end rows missing phantom ambiguous phase changes deliveries distinct dup parked
    q "CREATE TABLE bench_crash (id bigserial PRIMARY KEY, phase int NOT NULL, ts timestamptz NOT NULL)" >/dev/null
    start_sink crash --log "$TMP/crash.arrivals" --field id
    install wh_crash bench_crash "$SINK_EXTRA"
    add_hook wh_crash crash "$SINK_BASE/crash" 1 >/dev/null
    start_walhook wh_crash
    wait_until 60 "walhook (crash) streaming from its slot" slot_active wh_crash
    printf '%s\n' "INSERT INTO bench_crash (phase, ts) VALUES (:phase, clock_timestamp());" >"$TMP/crash.pgbench.sql"
    rm -f "$TMP/crash.stop"
    echo 1 >"$TMP/crash.phase"
    crash_load &
    LOAD_PID=$!
    say "crash: phase 1: $CRASH_RATE tx/s, walhook killed $CRASH_KILLS times"
    for (( i = 1; i <= CRASH_KILLS; i++ )); do crash_step kill; done
    echo 2 >"$TMP/crash.phase"
    # Phase 2: the kills with the three PostgreSQL disturbances spread among them.
    steps=()
    for (( i = 1; i <= CRASH_KILLS; i++ )); do
        steps+=(kill)
        (( i == (CRASH_KILLS + 3) / 4 )) && steps+=(fast)
        (( i == (CRASH_KILLS + 1) / 2 )) && steps+=(immediate)
        (( i == (3 * CRASH_KILLS + 3) / 4 )) && steps+=(walsender)
    done
    say "crash: phase 2: ${steps[*]}"
    for i in "${steps[@]}"; do crash_step "$i"; done
    stop_load
    end=$(q "SELECT pg_current_wal_lsn()")
    rows=$(q "SELECT count(*) FROM bench_crash")
    (( rows > 0 )) || die "crash: pgbench committed no row"
    say "crash: load stopped after $rows rows; waiting for walhook to confirm $end"
    i=$(( SECONDS + CRASH_DRAIN_TIMEOUT ))
    until slot_at wh_crash "$end"; do
        crash_keep_walhook
        (( SECONDS < i )) || die "crash: walhook did not confirm $end within ${CRASH_DRAIN_TIMEOUT}s"
        nap 0.1
    done
    crash_note_hwm
    stop_walhook crash
    parked=$(q "SELECT count(*) FROM wh_crash.delivery")
    (( parked == 0 )) || die "crash: $parked events are parked in wh_crash.delivery (the target never failed)"
    stop_sink
    drop_slot wh_crash

    q "TRUNCATE bench_result.arrival" >/dev/null
    psql_do -d bench -c "\\copy bench_result.arrival FROM '$TMP/crash.arrivals' WITH (FORMAT csv, DELIMITER ' ')" >/dev/null \
        || die "cannot load the sink's log $TMP/crash.arrivals"
    missing=$(q "SELECT count(*) FROM bench_crash c
                  WHERE NOT EXISTS (SELECT 1 FROM bench_result.arrival a WHERE a.value = c.id::text)")
    if (( missing > 0 )); then
        echo "crash: rows committed and never delivered (first 20 ids):" >&2
        q "SELECT id, phase, ts FROM bench_crash c
            WHERE NOT EXISTS (SELECT 1 FROM bench_result.arrival a WHERE a.value = c.id::text)
            ORDER BY id LIMIT 20" >&2
        die "crash: $missing of $rows committed changes never arrived"
    fi
    phantom=$(q "SELECT count(*) FROM bench_result.arrival a
                  WHERE NOT EXISTS (SELECT 1 FROM bench_crash c WHERE c.id::text = a.value)")
    (( phantom == 0 )) || die "crash: $phantom deliveries name a row that was never committed"
    ambiguous=$(q "SELECT count(*) FROM (SELECT event_id FROM bench_result.arrival
                   GROUP BY event_id HAVING count(DISTINCT value) > 1) AS x")
    (( ambiguous == 0 )) || die "crash: $ambiguous EventIds were used for more than one change"
    while IFS='|' read -r phase changes deliveries distinct; do
        dup=$(awk -v d="$deliveries" -v u="$distinct" 'BEGIN { printf "%.2f", 100 * (d - u) / u }')
        say "crash: phase $phase: $changes changes, $deliveries deliveries, $distinct EventIds, $dup% duplicates"
        if (( phase == 1 )); then
            summary crash "kill -9 x$CRASH_KILLS at ~$CRASH_RATE tx/s" "0 lost, $dup% duplicates" \
                "$changes changes, $deliveries deliveries" ""
        else
            summary crash "kill -9 x$CRASH_KILLS + PG fast/immediate/walsender" "0 lost, $dup% duplicates" \
                "$changes changes, $deliveries deliveries" "$(( CRASH_HWM / 1024 )) MiB"
        fi
    done < <(q "SELECT c.phase, count(DISTINCT c.id), count(*), count(DISTINCT a.event_id)
                  FROM bench_crash c JOIN bench_result.arrival a ON a.value = c.id::text
                 GROUP BY c.phase ORDER BY c.phase")
    (( CRASH_EXITS == 0 )) || summary crash "  walhook exits on its own (restarted)" "$CRASH_EXITS" "" ""
}

# ---------------------------------------------------------------- the run

for sec in "${SECTION_LIST[@]}"; do
    say "================ section $sec ================"
    "section_$sec"
done

echo
echo "================================ walhook benchmark: summary ================================"
echo "machine: $(nproc) CPUs; PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') (fsync=off); concurrency_per_webhook = $CONCURRENCY${DELIVERY_EXTRA:+; extra [delivery]: $(tr '\n' ' ' <<<"$DELIVERY_EXTRA")}"
echo "sink: walhook-sink over $( (( SINK_TLS )) && echo https || echo http ); rates of backlogs include walhook's start-up and confirmation delay"
printf '%-8s %-44s %-30s %-46s %s\n' section figure value "ceiling / reference" "peak RSS"
for row in "${SUMMARY[@]}"; do echo "$row"; done
echo "============================================================================================"
