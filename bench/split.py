"""Where the machine's CPU goes, per request, while one workload runs.

    python3 bench/split.py SERVER_PID [--from 1.5] [--for 6] -- LOAD COMMAND...

Runs the load command (bench/load.rs with one workload and no --slices),
reads every thread's CPU time (/proc/*/task/*/schedstat) once it has run
--from seconds and again --for seconds later, and prints the CPU each class
of thread spent per request in that window, in µs: the server's threads by
name (its argon2 threads, async workers, log writer), PostgreSQL's
processes, the load generator, and everything else on the machine; `idle`
is what no thread used. A workload's ratio to its ceiling is about the
ceiling's cost per request over the sum (RS256: two cores over the 2-thread
signatures/s; argon2id: the argon2 row over the sum), so this shows what
stands between them. Linux only; the requests per second are the load
generator's own, over its whole run. Processes that start and end inside
the window (a short-lived autovacuum worker) are not seen.
"""
import json
import os
import subprocess
import sys
import time
from collections import Counter


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # the thread or process ended meanwhile
        return None


def cpu_by_class(server_pid):
    """Nanoseconds of CPU each class of thread has used so far."""
    used = Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        comm = (read(f"/proc/{pid}/comm") or "").strip()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            stat = read(f"/proc/{pid}/task/{task}/schedstat")
            if stat is None:
                continue
            if pid == server_pid:
                who = "server " + (read(f"/proc/{pid}/task/{task}/comm") or "?").strip()
            elif comm in ("postgres", "load"):
                who = comm
            else:
                who = "other"
            used[who] += int(stat.split()[0])
    return used


def main():
    args = sys.argv[1:]
    if "--" not in args or not args[0].isdigit():
        sys.exit(__doc__)
    split = args.index("--")
    server, options, command = args[0], args[1:split], args[split + 1 :]
    start, window = 1.5, 6.0
    for name, value in zip(options[::2], options[1::2]):
        if name == "--from":
            start = float(value)
        elif name == "--for":
            window = float(value)
        else:
            sys.exit(f"split.py: unknown option {name}")
    load = subprocess.Popen(command, stdout=subprocess.PIPE)
    time.sleep(start)
    before, began = cpu_by_class(server), time.monotonic()
    time.sleep(window)
    after, seconds = cpu_by_class(server), time.monotonic() - began
    out, _ = load.communicate()
    if load.returncode != 0:
        sys.exit(f"split.py: the load command failed ({load.returncode})")
    result = json.loads(out.decode().strip().splitlines()[-1])
    requests = result["requests_per_s"] * seconds
    if requests <= 0:
        sys.exit("split.py: no requests answered")
    used = {who: (after[who] - before.get(who, 0)) / 1e3 / requests for who in after}
    cores = os.cpu_count() or 1
    used["idle"] = max(0.0, cores * seconds * 1e6 / requests - sum(used.values()))
    print(f"{result['workload']}: {result['requests_per_s']} req/s; CPU per request over {seconds:.1f} s")
    for who, us in sorted(used.items(), key=lambda kv: -kv[1]):
        if us >= 0.5:
            print(f"  {who:28} {us:10.1f} µs")
    print(f"  {'all':28} {sum(used.values()):10.1f} µs  ({cores} cores)")


if __name__ == "__main__":
    main()
