"""Turns one bench/run.sh run into the table and the JSON file.

Each workload ran in slices, its ceiling measured before, between and after
them (bench/load.rs --slices, --between). Each slice's ratio is its rate
against the mean of the ceilings on either side of it; a workload's row gives
the median slice's ratio, with the lowest and highest beside it, and req/s,
p50, p99 and non-2xx over all its slices. The JWKS latency while logins
flood is beside the most the load generator's own timer woke late (about
1 ms at rest; a stall of the whole machine, which no server can answer
through, shows there too).

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
        if not (d / f"{name}.json").exists():
            continue
        w = load(d / f"{name}.json")
        # Slice i lies between the ceilings measured just before (i) and just
        # after it (i + 1); its ratio is taken against their mean.
        near = [ceiling_of(c, b) for b in w["between"]]
        w["slice_ratios"] = [round(r / ((near[i] + near[i + 1]) / 2), 3) if near[i] + near[i + 1] else 0.0
                             for i, r in enumerate(w["slices"])]
        ranked = sorted(range(len(w["slices"])), key=lambda i: w["slice_ratios"][i])
        median = ranked[(len(ranked) - 1) // 2]  # the lower one of an even count
        ratio = w["ratio"] = w["slice_ratios"][median]
        reference = w["median_slice_ceiling"] = round((near[median] + near[median + 1]) / 2, 1)
        w["ratio_min"], w["ratio_max"] = w["slice_ratios"][ranked[0]], w["slice_ratios"][ranked[-1]]
        w["ratio_to_first_ceiling"] = round(w["requests_per_s"] / ceil[c], 3) if ceil[c] else 0.0
        ok = ratio >= goal and w["non_2xx"] == 0 and w["errors"] == 0
        w.update(ceiling=c, goal=goal, passed=ok)
        res["workloads"][name] = w
        spread = f' ({w["ratio_min"]:.2f}–{w["ratio_max"]:.2f})' if len(ranked) > 1 else ""
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

head = ("db", "workload", "req/s", "p50 ms", "p99 ms", "non-2xx", "ratio: median slice (min–max), its ceiling; or a note",
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
