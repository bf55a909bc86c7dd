#!/usr/bin/env bash
# gatehouse benchmark: this machine's ceilings and every workload, in one run.
#
#   bash bench/run.sh [POSTGRES_URL]     # or GATEHOUSE_BENCH_PG_URL=...
#
# Builds release; measures RS256 signatures/s (1 and 2 threads), argon2id
# hashes/s (2 threads) and a trivial poem handler's requests/s; then starts
# the release server on SQLite (and on a fresh PostgreSQL database when a URL
# is given), seeds it with the CLI and drives each workload with
# bench/load.rs (32 connections) in SLICES slices of DURATION s, the first
# after WARMUP s discarded, with the workload's ceiling measured for
# CEILING_SECONDS before, between and after them. Also measures idle RSS,
# peak RSS during the password flood and start to /ready with an existing
# key. Prints one table; writes bench/results/NAME.json (NAME=latest unless
# set).
#
# What a workload's CPU goes to, per request (server threads, PostgreSQL,
# the load generator): bench/split.py, against a running server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_URL=${1:-${GATEHOUSE_BENCH_PG_URL:-}}
DURATION=${DURATION:-1.5}
WARMUP=${WARMUP:-2}
SLICES=${SLICES:-8}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18080}
NAME=${NAME:-latest}
USERS=${USERS:-16}
WORKLOADS=${WORKLOADS:-jwks discovery client_credentials password refresh introspect userinfo password+jwks}

# GATEHOUSE_BENCH_BIN: measure another build of the server (before/after).
echo "==> building (release)" >&2
if [[ -z "${GATEHOUSE_BENCH_BIN:-}" ]]; then
    cargo build --release --quiet
fi
cargo build --release --quiet --examples
GH="${GATEHOUSE_BENCH_BIN:-$PWD/target/release/gatehouse}"
LOAD="$PWD/target/release/examples/load"
# The load generator shares the cores with the server. Woken for every
# answer, it took a core from the server each time (about 20 µs of its own
# CPU per client_credentials request, and the server's thread switched out
# and back): under SCHED_BATCH the kernel lets the running thread finish its
# slice instead, and the generator reads the answers that came meanwhile
# together (8-9 µs per request). Not for password and password+jwks: there
# it gains nothing (a few answers a second), and the JWKS requests it sends
# at a steady rate would leave late, by up to a slice of a hashing thread.
BATCH_DRIVER=("${LOAD}")
if command -v chrt >/dev/null 2>&1 && chrt --batch 0 true 2>/dev/null; then
    BATCH_DRIVER=(chrt --batch 0 "${LOAD}")
else
    echo "bench: chrt --batch unavailable; the load generator runs under the default policy" >&2
fi
TRIVIAL="$PWD/target/release/examples/trivial"
# The ceilings binary itself, so a ceiling between slices costs no cargo run.
CEILINGS_BIN=$(cargo bench --bench ceilings --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ceilings" and m.get("executable"):
        print(m["executable"])')
[[ -x "${CEILINGS_BIN}" ]] || { echo "bench: cargo built no ceilings binary" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "${pid}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "${PG_DB:-}" ]]; then
        psql -q "${PG_URL}" -c "drop database if exists ${PG_DB}" >/dev/null 2>&1 || true
    fi
    rm -rf "${WORK}"
}
trap cleanup EXIT

wait_ready() { # URL -> milliseconds until it answered 200
    local start=$(date +%s%N)
    for _ in $(seq 1000); do
        if curl -sf -o /dev/null "$1"; then
            echo $((($(date +%s%N) - start) / 1000000))
            return 0
        fi
        sleep 0.005
    done
    echo "bench: $1 never became ready" >&2
    return 1
}

echo "==> ceilings: RS256 (1, 2 threads), argon2id (2 threads)" >&2
CEILINGS=$(BENCH_SECONDS=3 "${CEILINGS_BIN}" | tail -1)
echo "${CEILINGS}" >"${WORK}/ceilings.json"
echo "    ${CEILINGS}" >&2

TRIVIAL_URL="http://127.0.0.1:$((PORT + 10))"
if curl -s -o /dev/null "${TRIVIAL_URL}/"; then
    echo "bench: something already answers on ${TRIVIAL_URL}; stop it or set PORT" >&2
    exit 1
fi
"${TRIVIAL}" "${TRIVIAL_URL#http://}" &
PIDS+=($!)
wait_ready "${TRIVIAL_URL}/" >/dev/null
TRIVIAL_LOAD=("${BATCH_DRIVER[@]}" --url "${TRIVIAL_URL}" --workload trivial --connections "${CONNECTIONS}")

echo "==> ceiling: trivial poem handler" >&2
"${TRIVIAL_LOAD[@]}" --duration 3 --warmup "${WARMUP}" | tee "${WORK}/trivial.json" >&2

# This machine's speed drifts by a fifth and more from one second to the
# next (a shared host: 67 to 103 argon2 hashes/s in 15 one-second
# measurements in a row), so the load generator runs each workload in SLICES
# short slices and, while its connections stand idle between them, measures
# the workload's ceiling (`--between`) for CEILING_SECONDS: before the first
# slice, between each two and after the last. Each slice's ratio is taken
# against the mean of the ceilings on either side of it, and the table gives
# the median slice. The trivial handler keeps running, idle, beside the
# server; the signing and hashing ceilings run under the default scheduling
# policy whatever the load generator's.
CEILING_SECONDS=${CEILING_SECONDS:-1}
DEFAULT_POLICY=()
if command -v chrt >/dev/null 2>&1; then
    DEFAULT_POLICY=(chrt --other 0)
fi
ceiling_command() { # WORKLOAD -> a shell command printing the ceiling as its last line
    case "$1" in
    jwks | discovery | introspect | userinfo)
        printf '%q ' "${TRIVIAL_LOAD[@]}" --duration "${CEILING_SECONDS}" --warmup 0.2 ;;
    password | password+jwks)
        printf '%q ' env BENCH_SECONDS="${CEILING_SECONDS}" BENCH_ONLY=argon2_2t "${DEFAULT_POLICY[@]}" "${CEILINGS_BIN}" ;;
    *)
        printf '%q ' env BENCH_SECONDS="${CEILING_SECONDS}" BENCH_ONLY=rs256_2t "${DEFAULT_POLICY[@]}" "${CEILINGS_BIN}" ;;
    esac
}

# The server as it ships (info-level JSON logs, one line per request, to a
# file); only the per-IP limit is lifted: all load comes from one address.
export GATEHOUSE_LISTEN="127.0.0.1:${PORT}" GATEHOUSE_LOG_FORMAT=json
export GATEHOUSE_RATE_LIMIT_PER_MINUTE=1000000000
unset RUST_LOG
URL="http://127.0.0.1:${PORT}"

bench_backend() { # NAME DATABASE_URL
    local name=$1 dir="${WORK}/$1"
    mkdir -p "${dir}"
    export GATEHOUSE_DATABASE_URL=$2 GATEHOUSE_KEYS_DIR="${dir}/keys"
    if curl -s -o /dev/null "${URL}/"; then
        echo "bench: something already answers on ${URL}; stop it or set PORT" >&2
        return 1
    fi
    echo "==> ${name}: first start (creates the key), seeding" >&2
    "${GH}" serve 2>>"${dir}/server.log" &
    local server=$!
    PIDS+=("${server}")
    wait_ready "${URL}/ready" >/dev/null
    local client id secret
    client=$("${GH}" clients create --name bench --grant client_credentials --grant password \
        --grant refresh_token --scope read 2>/dev/null)
    id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"${client}")
    secret=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"${client}")
    : >"${dir}/users"
    for n in $(seq "${USERS}"); do
        local email="bench${n}@example.com" password="bench-Pw-${n}-$RANDOM-lanyard"
        "${GH}" users create --email "${email}" --password-stdin --verified <<<"${password}" >/dev/null 2>&1
        echo "${email} ${password}" >>"${dir}/users"
    done
    kill "${server}"
    wait "${server}" 2>/dev/null || true

    echo "==> ${name}: start to /ready with the key in place" >&2
    "${GH}" serve 2>>"${dir}/server.log" &
    server=$!
    PIDS+=("${server}")
    local ready_ms
    ready_ms=$(wait_ready "${URL}/ready")
    sleep 1
    local idle_kib
    idle_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/${server}/status")
    echo "{\"start_to_ready_ms\": ${ready_ms}, \"idle_rss_kib\": ${idle_kib}, \"argon2_permits\": $(nproc)}" \
        | tee "${dir}/memory.json" >&2
    for w in ${WORKLOADS}; do
        echo "==> ${name}: ${w}, ${SLICES} slices of ${DURATION} s between its ceilings" >&2
        local driver=("${BATCH_DRIVER[@]}")
        [[ ${w} == password* ]] && driver=("${LOAD}")
        "${driver[@]}" --url "${URL}" --workload "${w}" --connections "${CONNECTIONS}" \
            --duration "${DURATION}" --warmup "${WARMUP}" --client "${id}:${secret}" \
            --users "${dir}/users" --pid "${server}" \
            --slices "${SLICES}" --between "$(ceiling_command "${w}")" | tee "${dir}/${w}.json" >&2
    done
    kill "${server}"
    wait "${server}" 2>/dev/null || true
}

bench_backend sqlite "sqlite://${WORK}/sqlite/gatehouse.db"
BACKENDS=sqlite
if [[ -n "${PG_URL}" ]]; then
    PG_DB="gatehouse_bench_$$"
    psql -q "${PG_URL}" -c "create database ${PG_DB}" >/dev/null
    bench_backend postgres "${PG_URL%/*}/${PG_DB}"
    BACKENDS="sqlite postgres"
fi

mkdir -p bench/results
python3 bench/report.py "${WORK}" "${BACKENDS}" "bench/results/${NAME}.json"
