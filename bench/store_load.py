#!/usr/bin/python3
"""Durable sessions' cost: streaming with the session store on vs off, in
one run on one machine (bench/README.md, "Durable sessions").

    /usr/bin/python3 bench/store_load.py [--runs 5] [--concurrency 64]
        [--steps 5000] [--inflight 1] [--checkpoint 1s] [--idle 512]
        [--aof]

Starts a redis-server (no persistence; with --aof, deploy/overlays/
durable's: an append-only file fsynced before each answer, in a temporary
folder) and two ssm_servers on free
loopback ports, identical but for `--session_store` (and the checkpoint
interval) on one, and runs `ssm_client bench --mode=stream` against each
in turn, alternating and swapping which goes first every round (off, on;
on, off; ...), so the machine's drift touches both alike. For each
run it prints steps/s, p99, the server's CPU per step (user + system from
/proc over the run) and, with the store, Redis's CPU per step, the bytes
of state the server wrote (`ssm_session_store_bytes_total` over the run,
per second) and Redis's memory while the streams ran (INFO's used_memory
over the run's start, per session record). Then it holds `--idle`
sessions open (`bench --mode=idle`) on each server: Redis's memory per
session again, with more sessions to average over, `MEMORY USAGE` of one
record, and each server's resident memory per session (the store keeps a
copy of a new session's state until its first write). Prints medians and
ranges at the end.

Needs a build (build/server/ssm_server, build/client/ssm_client),
redis-server and redis-cli (Debian: redis-server). Every process it starts
is stopped by its PID.
"""

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchlib import free_port

ROOT = Path(__file__).resolve().parents[1]
HZ = __import__("os").sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU a process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


class Processes:
    """What this script started, stopped by PID at the end."""

    def __init__(self, work):
        self.work, self.procs = work, []

    def start(self, name, args):
        log = open(self.work / f"{name}.log", "wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Redis:
    def __init__(self, procs, cli, aof):
        self.port, self.cli = free_port(), cli
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if aof
                       else ["--appendonly", "no"])
        self.proc = procs.start("redis", [
            shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", *persistence, "--protected-mode", "no", "--dir", str(procs.work)])
        for _ in range(100):
            if self.command("PING") == "PONG":
                return
            time.sleep(0.05)
        raise SystemExit(f"redis-server did not start; see {procs.work}/redis.log")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def command(self, *words):
        r = subprocess.run([self.cli, "-p", str(self.port), *words], capture_output=True,
                           text=True)
        return r.stdout.strip()

    def used_memory(self):
        return int(re.search(r"^used_memory:(\d+)", self.command("INFO", "memory"), re.M)
                   .group(1))

    def sessions(self):
        """The keys of the session records."""
        return self.command("--scan", "--pattern", "ssm:session:*").split()

    def memory_usage(self, key):
        out = self.command("MEMORY", "USAGE", key, "SAMPLES", "0")
        return int(out) if out.isdigit() else None

    def value_bytes(self, key):
        out = self.command("STRLEN", key)
        return int(out) if out.isdigit() else None


class Server:
    def __init__(self, procs, name, binary, client, flags):
        self.port, self.metrics_port, self.client = free_port(), free_port(), client
        self.proc = procs.start(name, [
            binary, f"--address=127.0.0.1:{self.port}", f"--model_repository={ROOT / 'models'}",
            "--metrics_address=127.0.0.1", f"--metrics_port={self.metrics_port}", *flags])
        for _ in range(150):
            if subprocess.run([client, f"--address=127.0.0.1:{self.port}", "--deadline=1s",
                               "health"], capture_output=True).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(f"{name} did not start; see {procs.work}/{name}.log")

    def metric(self, name):
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0


def bench(server, args, extra):
    cmd = [server.client, f"--address=127.0.0.1:{server.port}", "bench", "--json",
           f"--model={args.model}", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench failed ({r.returncode}): {r.stderr.strip()}")
    report = json.loads(r.stdout)
    if report["errors"]:
        raise SystemExit(f"bench errors: {report['first_error']}")
    return report


def stream_run(server, redis, args):
    """One streaming run; with a store, what it wrote and Redis's memory."""
    store = redis is not None
    cpu0 = cpu_seconds(server.proc.pid)
    rcpu0 = cpu_seconds(redis.proc.pid) if store else 0.0
    bytes0 = server.metric("ssm_session_store_bytes_total") if store else 0.0
    writes0 = server.metric("ssm_session_store_writes_total") if store else 0.0
    if store:
        # The previous run's sessions are deleted on the checkpointer's
        # next tick after they close: the baseline is taken without them.
        deadline = time.monotonic() + 5
        while redis.sessions() and time.monotonic() < deadline:
            time.sleep(0.1)
    mem0 = redis.used_memory() if store else 0
    sample = {}

    def sample_redis():
        # Mid-run: every stream's record is in the store by then.
        time.sleep(args.sample_after)
        sample["mem"] = redis.used_memory() - mem0
        keys = redis.sessions()
        sample["records"] = len(keys)
        if keys:
            sample["usage"] = redis.memory_usage(keys[0])
            sample["value"] = redis.value_bytes(keys[0])

    sampler = threading.Thread(target=sample_redis) if store else None
    if sampler:
        sampler.start()
    report = bench(server, args, ["--mode=stream", f"--concurrency={args.concurrency}",
                                  f"--steps={args.steps}", f"--inflight={args.inflight}",
                                  f"--chunk={args.chunk}"])
    if sampler:
        sampler.join()
    steps, seconds = report["steps"], report["seconds"]
    row = {
        "steps_per_s": report["steps_per_second"],
        "p99_ms": report["latency_us"]["p99"] / 1e3,
        "server_us": (cpu_seconds(server.proc.pid) - cpu0) / steps * 1e6,
        "seconds": seconds,
    }
    if store:
        row.update({
            "redis_us": (cpu_seconds(redis.proc.pid) - rcpu0) / steps * 1e6,
            "bytes_per_s": (server.metric("ssm_session_store_bytes_total") - bytes0) / seconds,
            "writes_per_s": (server.metric("ssm_session_store_writes_total") - writes0) / seconds,
            "mem_per_record": sample["mem"] / sample["records"] if sample.get("records") else None,
            "records": sample.get("records", 0),
            "usage": sample.get("usage"),
            "value": sample.get("value"),
        })
    return row


def idle_memory(server, redis, args):
    """With --idle sessions held open: the server's resident memory per
    session and, with a store, Redis's."""
    mem0 = redis.used_memory() if redis else 0
    out = {}

    def sample_redis():
        time.sleep(args.idle_hold / 2)
        out["mem"] = redis.used_memory() - mem0
        keys = redis.sessions()
        out["records"] = len(keys)
        out["usage"] = redis.memory_usage(keys[0]) if keys else None
        out["value"] = redis.value_bytes(keys[0]) if keys else None

    sampler = threading.Thread(target=sample_redis) if redis else None
    if sampler:
        sampler.start()
    report = bench(server, args, ["--mode=idle", f"--concurrency={args.idle}",
                                  f"--hold_seconds={args.idle_hold}",
                                  f"--server_pid={server.proc.pid}"])
    if sampler:
        sampler.join()
    out["server_kib"] = ((report["server_rss_held_kib"] - report["server_rss_before_kib"])
                         / args.idle)
    return out


def spread(values, fmt):
    values = sorted(values)
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(values[0])}-{fmt.format(values[-1])})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", default=str(ROOT / "build/server/ssm_server"))
    p.add_argument("--client", default=str(ROOT / "build/client/ssm_client"))
    p.add_argument("--model", default="s4-demo")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--chunk", type=int, default=1)
    p.add_argument("--checkpoint", default="1s", help="--session_checkpoint of the store side")
    p.add_argument("--sample_after", type=float, default=2.0,
                   help="seconds into a store run to read Redis's memory")
    p.add_argument("--idle", type=int, default=512, help="sessions held open (0: skip)")
    p.add_argument("--idle_hold", type=float, default=4.0)
    p.add_argument("--server_flags", default="", help="more flags for both servers")
    p.add_argument("--aof", action="store_true",
                   help="Redis keeps an append-only file, fsynced before each answer")
    args = p.parse_args()
    cli = shutil.which("redis-cli")
    if not shutil.which("redis-server") or not cli:
        raise SystemExit("store_load: needs redis-server and redis-cli (apt install redis-server)")
    for binary in (args.server, args.client):
        if not Path(binary).is_file():
            raise SystemExit(f"store_load: {binary} not found (build first)")

    with tempfile.TemporaryDirectory(prefix="store_load.") as work:
        procs = Processes(Path(work))
        try:
            redis = Redis(procs, cli, args.aof)
            common = args.server_flags.split()
            off = Server(procs, "off", args.server, args.client, common)
            on = Server(procs, "on", args.server, args.client,
                        common + [f"--session_store={redis.url}",
                                  f"--session_checkpoint={args.checkpoint}"])
            print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
            print(f"{args.concurrency} streams x {args.steps} steps of {args.model}, chunk "
                  f"{args.chunk}, {args.inflight} in flight; store: {redis.url}"
                  f"{' (append-only file, fsync always)' if args.aof else ''}, checkpoint "
                  f"every {args.checkpoint}; {args.runs} runs each, alternating (off first, "
                  f"then on first, ...)")
            rows = {"off": [], "on": []}
            sides = [("off", off, None), ("on", on, redis)]
            for r in range(args.runs):
                for label, server, store in (sides if r % 2 == 0 else sides[::-1]):
                    row = stream_run(server, store, args)
                    rows[label].append(row)
                    line = (f"{label:3} {row['steps_per_s']:8.0f} steps/s  p99 "
                            f"{row['p99_ms']:6.2f} ms  server {row['server_us']:5.1f} us/step")
                    if store:
                        line += (f"  redis {row['redis_us']:4.1f} us/step  "
                                 f"{row['bytes_per_s'] / 1e6:5.2f} MB/s in "
                                 f"{row['writes_per_s']:5.1f} writes/s  "
                                 f"{row['records']} records, "
                                 f"{(row['mem_per_record'] or 0) / 1024:5.1f} KiB each")
                    print(line, flush=True)
            print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
            for label in ("off", "on"):
                rs = rows[label]
                line = (f"store {label:3}: {spread([x['steps_per_s'] for x in rs], '{:.0f}')} "
                        f"steps/s, p99 {spread([x['p99_ms'] for x in rs], '{:.2f}')} ms, server "
                        f"{spread([x['server_us'] for x in rs], '{:.1f}')} us/step")
                if label == "on":
                    line += (f", redis {spread([x['redis_us'] for x in rs], '{:.1f}')} us/step, "
                             f"{spread([x['bytes_per_s'] / 1e6 for x in rs], '{:.2f}')} MB/s "
                             f"of state written, "
                             f"{spread([x['writes_per_s'] for x in rs], '{:.1f}')} writes/s")
                print(line)
            ratio = [a["steps_per_s"] / b["steps_per_s"] for a, b in zip(rows["on"], rows["off"])]
            print(f"on / off, run by run: {spread(ratio, '{:.3f}')}; medians: "
                  f"{statistics.median(x['steps_per_s'] for x in rows['on']) / statistics.median(x['steps_per_s'] for x in rows['off']):.3f}")
            mems = [x["mem_per_record"] for x in rows["on"] if x.get("mem_per_record")]
            if mems:
                u = rows["on"][-1]
                print(f"redis memory while streaming: {spread([m / 1024 for m in mems], '{:.1f}')}"
                      f" KiB per record (used_memory over the run's start / records); one "
                      f"record: value {u['value']} B, MEMORY USAGE {u['usage']} B")
            if args.idle:
                m_off = idle_memory(off, None, args)
                m = idle_memory(on, redis, args)
                print(f"{args.idle} idle sessions: {m['records']} records, used_memory "
                      f"+{m['mem'] / 2**20:.1f} MiB = {m['mem'] / max(m['records'], 1) / 1024:.1f}"
                      f" KiB per session; one record: value {m['value']} B, MEMORY USAGE "
                      f"{m['usage']} B; server RSS per session {m_off['server_kib']:.0f} KiB "
                      f"without the store, {m['server_kib']:.0f} KiB with it")
        finally:
            procs.stop()


if __name__ == "__main__":
    sys.exit(main())
