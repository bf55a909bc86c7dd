"""Turns one bench/run.sh run into the table and the JSON file.

Each workload's row is its median round (by ratio): that round's req/s, p50,
p99 and ratio, with the lowest and highest round's ratio beside it; non-2xx
counts every round, peak RSS is the highest round's, and the JWKS latency
while logins flood is the round with the worst p99, beside the most the
load generator's own timer woke late in that round (about 1 ms at rest;
a stall of the whole machine, which no server can answer through, shows
there too).

python3 bench/report.py WORKDIR "sqlite [postgres]" OUT.json
"""
import json
import sys
from pathlib import Path

work, backends, out_path = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3]
load = lambda p: json.loads(p.read_text())
ceilings = load(work / "ceilings.json")
trivial = load(work / "trivial.json")
ceil = {
    "rs256_2t": ceilings["rs256_signatures_per_s_2_threads"],
    "argon2_2t": ceilings["argon2id_hashes_per_s_2_threads"],
    "trivial": trivial["requests_per_s"],
}
# workload -> (ceiling, goal ratio)
GOALS = {
    "jwks": ("trivial", 0.50),
    "discovery": ("trivial", 0.50),
    "client_credentials": ("rs256_2t", 0.80),
    "password": ("argon2_2t", 0.90),
    "refresh": ("rs256_2t", 0.65),
    "introspect": ("trivial", 0.12),
    "userinfo": ("trivial", 0.12),
    "password+jwks": ("argon2_2t", 0.90),
}
CEILING_KEYS = {"rs256_2t": "rs256_signatures_per_s_2_threads", "argon2_2t": "argon2id_hashes_per_s_2_threads"}
MB = 1e6

rows, result = [], {"ceilings": {**ceilings, "trivial_handler_requests_per_s": ceil["trivial"],
                                 "trivial_handler_driver": trivial}, "backends": {}}
ceiling_of = lambda c, n: n["requests_per_s"] if c == "trivial" else n[CEILING_KEYS[c]]
# Tens of requests a second (the password floods) keep a decimal.
rate = lambda r: f"{r:.1f}" if r < 100 else f"{r:.0f}"
for backend in backends:
    d = work / backend
    mem = load(d / "memory.json")
    res = {"memory": mem, "workloads": {}}
    for name, (c, goal) in GOALS.items():
        rounds = []
        while (d / f"{name}.round.{len(rounds) + 1}.json").exists():
            rounds.append(load(d / f"{name}.round.{len(rounds) + 1}.json"))
        if not rounds:
            continue
        # Round i lies between the ceilings measured just before (i - 1) and
        # just after it (i); its ratio is taken against their mean.
        near = [ceiling_of(c, load(d / f"{name}.ceiling.{i}.json")) for i in range(len(rounds) + 1)]
        for i, r in enumerate(rounds):
            r["adjacent_ceilings"] = near[i:i + 2]
            r["adjacent_ceiling"] = round((near[i] + near[i + 1]) / 2, 1)
            r["ratio"] = round(r["requests_per_s"] / r["adjacent_ceiling"], 3) if r["adjacent_ceiling"] else 0.0
        ranked = sorted(rounds, key=lambda r: r["ratio"])
        w = dict(ranked[(len(ranked) - 1) // 2])  # the median round (the lower one of an even count)
        ratio, reference = w["ratio"], w["adjacent_ceiling"]
        w["non_2xx"] = sum(r["non_2xx"] for r in rounds)
        w["errors"] = sum(r["errors"] for r in rounds)
        if any("peak_rss_kib" in r for r in rounds):
            w["peak_rss_kib"] = max(r.get("peak_rss_kib", 0) for r in rounds)
        if any("jwks" in r for r in rounds):
            worst = max((r["jwks"] for r in rounds if "jwks" in r), key=lambda j: j["p99_ms"])
            w["jwks"] = {**worst, "non_2xx": sum(r["jwks"]["non_2xx"] for r in rounds if "jwks" in r),
                         "errors": sum(r["jwks"]["errors"] for r in rounds if "jwks" in r)}
        w["rounds"] = rounds
        w["ratio_min"], w["ratio_max"] = ranked[0]["ratio"], ranked[-1]["ratio"]
        w["ratio_to_first_ceiling"] = round(w["requests_per_s"] / ceil[c], 3) if ceil[c] else 0.0
        ok = ratio >= goal and w["non_2xx"] == 0 and w["errors"] == 0
        w.update(ceiling=c, goal=goal, passed=ok)
        res["workloads"][name] = w
        spread = f' ({w["ratio_min"]:.2f}–{w["ratio_max"]:.2f})' if len(rounds) > 1 else ""
        rows.append((backend, name, rate(w["requests_per_s"]), f'{w["p50_ms"]:.2f}', f'{w["p99_ms"]:.2f}',
                     str(w["non_2xx"] + w["errors"]), f"{ratio:.2f}{spread} of {c} {reference:.0f}",
                     f'{w["ratio_to_first_ceiling"]:.2f}', f"≥ {goal:.2f}", "pass" if ok else "FAIL"))
        if "jwks" in w:
            j = w["jwks"]
            ok = j["p99_ms"] <= 20 and j["non_2xx"] == 0 and j["errors"] == 0
            w["jwks"]["passed"] = ok
            late = f'driver woke up to {j["driver_late_max_ms"]:.1f} ms late' if "driver_late_max_ms" in j else ""
            rows.append((backend, f' jwks @{j["rate_per_s"]:.0f}/s', f'{j["requests_per_s"]:.0f}', f'{j["p50_ms"]:.2f}',
                         f'{j["p99_ms"]:.2f}', str(j["non_2xx"] + j["errors"]), late, "", "p99 ≤ 20 ms",
                         "pass" if ok else "FAIL"))
    idle = mem["idle_rss_kib"] * 1024 / MB
    rows.append((backend, "idle RSS", "", "", "", "", f"{idle:.1f} MB", "", "≤ 30 MB", "pass" if idle <= 30 else "FAIL"))
    pw = res["workloads"].get("password", {})
    if "peak_rss_kib" in pw:
        peak = pw["peak_rss_kib"] * 1024 / MB
        limit = idle + mem["argon2_permits"] * 19 * 1024 * 1024 / MB + 20
        mem["peak_rss_password_mb"], mem["peak_rss_limit_mb"] = round(peak, 1), round(limit, 1)
        rows.append((backend, "peak RSS (password)", "", "", "", "", f"{peak:.1f} MB", "", f"≤ {limit:.1f} MB",
                     "pass" if peak <= limit else "FAIL"))
    ms = mem["start_to_ready_ms"]
    rows.append((backend, "start to /ready", "", "", "", "", f"{ms} ms", "", "< 1000 ms" if backend == "sqlite" else "",
                 ("pass" if ms < 1000 else "FAIL") if backend == "sqlite" else ""))
    result["backends"][backend] = res

head = ("db", "workload", "req/s", "p50 ms", "p99 ms", "non-2xx", "ratio: median round (min–max), its ceiling; or a note",
        "vs first", "goal", "")
widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
fmt = lambda r: "  ".join(v.rjust(w) if i in (2, 3, 4, 5) else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
print(f'ceilings: RS256 {ceilings["rs256_signatures_per_s_1_thread"]:.0f}/s (1 thread), '
      f'{ceil["rs256_2t"]:.0f}/s (2 threads); argon2id {ceil["argon2_2t"]}/s (2 threads); '
      f'trivial handler {ceil["trivial"]:.0f} req/s (p99 {trivial["p99_ms"]} ms; '
      f'load generator {trivial["driver_cpu_us_per_request"]} µs CPU/request)')
print(fmt(head))
for r in rows:
    print(fmt(r))
Path(out_path).write_text(json.dumps(result, indent=2) + "\n")
print(f"written to {out_path}")
