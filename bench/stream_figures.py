#!/usr/bin/python3
"""The streaming figures of README and bench/README.md, reproducibly.

Starts ssm_server on free loopback ports (the shipped repository, metrics
off, any extra server flags after `--`), runs each workload of
`ssm_client bench` --runs times, alternating between the workloads (and
between the servers, with --servers) so a drift of the shared machine hits
them all alike, and prints per workload the median of the runs and their
range: steps/s, p50 and p99 of the chunk round trip, the server's and the
client's CPU per chunk (user + system, from /proc and getrusage), and the
load average (`uptime`) before each run, since the two cores are shared
with other work. Stops its servers by PID.

    /usr/bin/python3 bench/stream_figures.py [--build=build] [--runs=5]
        [--only=lockstep64,one_lockstep,one_pipelined,slow1000]
        [--servers=before:/path/to/ssm_server,after:build/server/ssm_server]
        [--model=s4-demo[,legs-memory]] [--transport=tcp[,unix]] [--json=out.json]
        [-- server flags...]

--transport=tcp,unix starts every server twice, on loopback TCP and on a
Unix-domain socket (what a co-located client can use), and alternates
them too.

--model with several models alternates them too (each server serves the
whole repository): `--model=s4-demo,legs-memory` sets the service's cost
beside that of a model that costs next to nothing, the ceiling the
transport leaves on this machine.

Workloads (names for --only):
  lockstep64     64 streams of single steps, lock-step, 1000 each
  one_lockstep   1 stream of single steps, lock-step, 5000
  one_pipelined  1 stream of single steps, 32 in flight, 20000
  slow1000       1000 streams at 10 single steps a second each, 100 each
                 (10 s a run), with the server's memory
The client is always --build's ssm_client.
"""

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, load_average, wait_healthy

WORKLOADS = {
    "lockstep64": ["--concurrency=64", "--steps=1000", "--inflight=1"],
    "one_lockstep": ["--concurrency=1", "--steps=5000", "--inflight=1"],
    "one_pipelined": ["--concurrency=1", "--steps=20000", "--inflight=32"],
    "slow1000": ["--concurrency=1000", "--steps=100", "--inflight=1", "--rate=10"],
}


def summarize(values):
    values = sorted(values)
    return statistics.median(values), values[0], values[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--model", default="s4-demo",
                    help="a model, or several (comma-separated) to alternate like servers")
    ap.add_argument("--servers", help="label:path,... (default: the build's ssm_server)")
    ap.add_argument("--transport", default="tcp",
                    help="tcp (loopback), unix (a Unix-domain socket), or both: tcp,unix")
    ap.add_argument("--json", help="also write every run's report here")
    ap.add_argument("server_flags", nargs="*", help="after --: extra ssm_server flags")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    client = os.path.join(root, args.build, "client", "ssm_client")
    servers = [("server", os.path.join(root, args.build, "server", "ssm_server"))]
    if args.servers:
        servers = [tuple(item.split(":", 1)) for item in args.servers.split(",")]
        servers = [(label, os.path.join(root, path)) for label, path in servers]
    for exe in [client] + [path for _, path in servers]:
        if not os.access(exe, os.X_OK):
            sys.exit("stream_figures: no executable %s (build first)" % exe)
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in WORKLOADS:
            sys.exit("stream_figures: unknown workload %r (known: %s)" % (n, ", ".join(WORKLOADS)))

    models = [m for m in args.model.split(",") if m]
    transports = [t for t in args.transport.split(",") if t]
    for t in transports:
        if t not in ("tcp", "unix"):
            sys.exit("stream_figures: unknown transport %r (tcp, unix)" % t)
    sockets = tempfile.mkdtemp(prefix="ssm-figures-")
    procs = []
    try:
        for (label, path), transport in [(s, t) for t in transports for s in servers]:
            if transport == "unix":
                address = "unix:%s/%s.sock" % (sockets, label)
                label = label + "/unix" if len(transports) > 1 else label
            else:
                address = "127.0.0.1:%d" % free_port()
                label = label + "/tcp" if len(transports) > 1 else label
            proc = subprocess.Popen(
                [path, "--address=" + address,
                 "--model_repository=" + os.path.join(root, "models"),
                 "--metrics_port=0"] + args.server_flags,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append((label, address, proc))
        for label, address, proc in procs:
            wait_healthy("stream_figures", client, address, proc)
        # Every (server, model) pair is measured alike, alternating.
        columns = [(label if len(models) == 1 else "%s/%s" % (label, model), address, proc, model)
                   for model in models for label, address, proc in procs]
        runs = {(column[0], n): [] for column in columns for n in names}
        for _, address, _, model in columns:
            # One short warm-up: kernel caches, the allocator, the first chunks.
            subprocess.run([client, "--address=" + address, "bench", "--model=" + model,
                            "--concurrency=8", "--steps=200"], capture_output=True, check=True)
        print("server flags: %s" % (" ".join(args.server_flags) or "(defaults)"))
        for r in range(args.runs):
            for n in names:
                for label, address, proc, model in columns:
                    load = load_average()
                    out = subprocess.run(
                        [client, "--address=" + address, "bench", "--json", "--mode=stream",
                         "--model=" + model, "--server_pid=%d" % proc.pid,
                         "--max_seconds=120"] + WORKLOADS[n],
                        capture_output=True, text=True)
                    report = json.loads(out.stdout)
                    report["load_before"] = load
                    runs[(label, n)].append(report)
                    print("%-20s %-14s run %d: %8.0f steps/s  p50 %6.3f ms  p99 %6.3f ms  server %5.1f"
                          " us  client %5.1f us per chunk  errors %d  load %.2f%s" % (
                              label, n, r + 1, report["steps_per_second"],
                              report["latency_us"]["p50"] / 1000,
                              report["latency_us"]["p99"] / 1000,
                              report["server_cpu_us_per_completed"],
                              report["client_cpu_us_per_completed"], report["errors"], load,
                              "  rss %.1f -> %.1f MiB" % (report["server_rss_before_kib"] / 1024,
                                                         report["server_rss_held_kib"] / 1024)
                              if n == "slow1000" else ""),
                          flush=True)
    finally:
        for _, _, proc in procs:
            proc.terminate()
        for _, _, proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(sockets, ignore_errors=True)

    print("\nmedian (range) of %d runs:" % args.runs)
    for n in names:
        for label, _, _, _ in columns:
            rs = runs[(label, n)]
            rate = summarize([r["steps_per_second"] for r in rs])
            p50 = summarize([r["latency_us"]["p50"] / 1000 for r in rs])
            p99 = summarize([r["latency_us"]["p99"] / 1000 for r in rs])
            srv = summarize([r["server_cpu_us_per_completed"] for r in rs])
            cli = summarize([r["client_cpu_us_per_completed"] for r in rs])
            load = summarize([r["load_before"] for r in rs])
            errors = sum(r["errors"] for r in rs)
            print("%-20s %-14s %6.1fk steps/s (%.1fk-%.1fk)  p50 %.3f ms  p99 %.2f ms (%.2f-%.2f)  "
                  "server %.1f us (%.1f-%.1f)  client %.1f us per chunk  errors %d  "
                  "load %.1f-%.1f" % (
                      label, n, rate[0] / 1e3, rate[1] / 1e3, rate[2] / 1e3, p50[0], p99[0],
                      p99[1], p99[2], srv[0], srv[1], srv[2], cli[0], errors, load[1], load[2]))
            if n == "slow1000":
                held = summarize([(r["server_rss_held_kib"] - r["server_rss_before_kib"]) / 1024
                                  for r in rs])
                print("%-23s server RSS +%.1f MiB while streaming (%.1f-%.1f), %.0f MiB at most" % (
                    "", held[0], held[1], held[2],
                    max(r["server_rss_held_kib"] for r in rs) / 1024))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"%s/%s" % key: value for key, value in runs.items()}, f, indent=1)


if __name__ == "__main__":
    main()
