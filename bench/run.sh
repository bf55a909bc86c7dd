#!/usr/bin/env bash
# Token-core benchmark: client_credentials requests/s of a release server on
# SQLite, against this machine's RS256 signing ceiling measured in the same run.
#
#   bash bench/run.sh            # DURATION=10 CONNECTIONS=32 by default
#
# Needs wrk (apt-get install wrk). Writes bench/results/latest.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18080}
command -v wrk >/dev/null || { echo "bench: wrk is needed (apt-get install wrk)" >&2; exit 1; }

cargo build --release --quiet
echo "==> ceilings (RS256 with a parsed key, argon2id)"
CEILINGS=$(BENCH_SECONDS=3 cargo bench --quiet --bench ceilings 2>/dev/null | tail -1)
echo "${CEILINGS}"

WORK=$(mktemp -d)
trap 'kill "${SERVER:-0}" 2>/dev/null || true; rm -rf "${WORK}"' EXIT
GH="$PWD/target/release/gatehouse"
export GATEHOUSE_DATABASE_URL="sqlite://${WORK}/gatehouse.db" GATEHOUSE_KEYS_DIR="${WORK}/keys"
export GATEHOUSE_LISTEN="127.0.0.1:${PORT}" RUST_LOG=warn
# All load comes from one address: lift the per-IP limit for the benchmark.
export GATEHOUSE_RATE_LIMIT_PER_MINUTE=1000000000
(cd "${WORK}" && exec "${GH}" serve) &
SERVER=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:${PORT}/ready" >/dev/null && break; sleep 0.1; done

CLIENT=$("${GH}" clients create --name bench --grant client_credentials --scope read 2>/dev/null)
ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])' <<<"${CLIENT}")
SECRET=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])' <<<"${CLIENT}")
export AUTH="Basic $(printf '%s:%s' "${ID}" "${SECRET}" | base64 -w0)"

echo "==> warm-up (2 s, discarded)"
wrk -t2 -c"${CONNECTIONS}" -d2s -s bench/client_credentials.lua "http://127.0.0.1:${PORT}/oauth2/token" >/dev/null
echo "==> client_credentials: ${CONNECTIONS} connections, ${DURATION} s"
OUT=$(wrk -t2 -c"${CONNECTIONS}" -d"${DURATION}s" --latency -s bench/client_credentials.lua \
    "http://127.0.0.1:${PORT}/oauth2/token")
echo "${OUT}"

mkdir -p bench/results
python3 - "${CEILINGS}" "${OUT}" <<'PY' | tee bench/results/latest.json
import json, re, sys
ceilings = json.loads(sys.argv[1])
out = sys.argv[2]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
def latency(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return round(float(m.group(1)) * scale, 2)
ceiling = ceilings["rs256_signatures_per_s_2_threads"]
print(json.dumps({
    "ceilings": ceilings,
    "client_credentials": {
        "requests_per_s": rps, "p50_ms": latency(50), "p99_ms": latency(99),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "ratio_to_2_thread_signing_ceiling": round(rps / ceiling, 3),
    },
}, indent=2))
PY
