"""Turns one bench/run.sh run into the table and the JSON file.

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

used_adjacent = False
rows, result = [], {"ceilings": {**ceilings, "trivial_handler_requests_per_s": ceil["trivial"],
                                 "trivial_handler_driver": trivial}, "backends": {}}
for backend in backends:
    d = work / backend
    mem = load(d / "memory.json")
    res = {"memory": mem, "workloads": {}}
    for name, (c, goal) in GOALS.items():
        f = d / f"{name}.json"
        if not f.exists():
            continue
        w = load(f)
        # The mean of the ceilings measured just before and just after this
        # workload, when there are any.
        near = {when: load(p) for when, p in (("before", d / f"{name}.ceiling.json"),
                                               ("after", d / f"{name}.ceiling-after.json")) if p.exists()}
        reference = ceil[c]
        if near:
            used_adjacent = True
            values = {when: n["requests_per_s"] if c == "trivial" else n[CEILING_KEYS[c]] for when, n in near.items()}
            reference = sum(values.values()) / len(values)
            w["adjacent_ceilings"] = values
            w["adjacent_ceiling"] = round(reference, 1)
        ratio = w["requests_per_s"] / reference if reference else 0.0
        w["ratio_to_first_ceiling"] = round(w["requests_per_s"] / ceil[c], 3) if ceil[c] else 0.0
        ok = ratio >= goal and w["non_2xx"] == 0 and w["errors"] == 0
        w.update(ceiling=c, ratio=round(ratio, 3), goal=goal, passed=ok)
        res["workloads"][name] = w
        rows.append((backend, name, f'{w["requests_per_s"]:.0f}', f'{w["p50_ms"]:.2f}', f'{w["p99_ms"]:.2f}',
                     str(w["non_2xx"] + w["errors"]), f"{ratio:.2f} of {c} {reference:.0f}",
                     f'{w["ratio_to_first_ceiling"]:.2f}', f"≥ {goal:.2f}", "pass" if ok else "FAIL"))
        if "jwks" in w:
            j = w["jwks"]
            ok = j["p99_ms"] <= 20 and j["non_2xx"] == 0 and j["errors"] == 0
            w["jwks"]["passed"] = ok
            rows.append((backend, f' jwks @{j["rate_per_s"]:.0f}/s', f'{j["requests_per_s"]:.0f}', f'{j["p50_ms"]:.2f}',
                         f'{j["p99_ms"]:.2f}', str(j["non_2xx"] + j["errors"]), "", "", "p99 ≤ 20 ms", "pass" if ok else "FAIL"))
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

head = ("db", "workload", "req/s", "p50 ms", "p99 ms", "non-2xx", "ratio (ceilings before and after)" if used_adjacent else "ratio (first ceilings)", "vs first", "goal", "")
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
