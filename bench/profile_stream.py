#!/usr/bin/python3
"""Where a streamed chunk's microseconds go, on the server and the client.

Starts one ssm_server on a free loopback port, runs `ssm_client bench`
(default: 64 lock-step streams of single steps on s4-demo) and samples both
processes with perf's software clock (`perf record -e cpu-clock`, DWARF
call stacks: this machine has no hardware counters), then sorts every
sample into one category by its stack (the rules below) and turns the
shares into microseconds per chunk with each side's CPU time per chunk,
which the bench reports (user + system, /proc and getrusage). Kernel time
counts: on loopback the sender's system call also runs the receiver's TCP
processing.

With --syscalls the processes are not sampled: perf counts their system
calls (the kernel's syscall tracepoints, on both sides) and /proc their
threads' CPU time (per thread name: gRPC's, and ours, which name
themselves ssm-*), and the script prints both per chunk. A system call
per message on a side means its writes were not coalesced.

With --callgrind the server runs under valgrind's callgrind instead (no
kernel time; instructions, which a busy machine does not disturb) and the
script prints the server's instructions per chunk, in total and inclusive
for the functions that matter (the model step, the reactor, parsing,
serializing).

    /usr/bin/python3 bench/profile_stream.py [--build=build]
        [--bench="--concurrency=64 --steps=2000 --inflight=1"]
        [--syscalls | --callgrind] [--unix] [--server=PATH] [--keep=DIR]
        [-- server flags...]

Needs perf (or valgrind for --callgrind) and a build. Stops its server by
PID.
"""

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, load_average, wait_healthy

# A sample's category: the first rule that matches, tried in this order.
# `any`: a regular expression some frame's symbol must match; `leaf`: the
# sampled frame's symbol; `dso`: the sampled frame's object.
RULES = [
    # The model's numerics: one session's or a batch's step (the recurrent
    # steps, the linears, norms and activations, and the state copies).
    ("model step: state save/restore copy",
     dict(leaf=r"memmove|memcpy", any=r"ssm::Session::Run\b|ssm::Session::RunBatch")),
    ("model step", dict(any=r"ssm::Session::Run|ssm::Session::RunBatch|S4Model|SsmStepper|"
                        r"ssm::internal::ParallelFor|HippoModel")),
    # The kernel, by system call.
    ("kernel: sendmsg (TCP out, and the loopback peer's receive path)",
     dict(dso=r"kernel", any=r"sendmsg|__sys_sendto|tcp_sendmsg")),
    ("kernel: recvmsg / read (TCP in)", dict(dso=r"kernel", any=r"recvmsg|__x64_sys_read\b|tcp_recvmsg")),
    ("kernel: epoll_wait (incl. sleeping and waking)", dict(dso=r"kernel", any=r"epoll_wait")),
    ("kernel: futex (threads waking each other)", dict(dso=r"kernel", any=r"futex")),
    ("kernel: /proc reads (the connection guard's TCP table scans)",
     dict(dso=r"kernel", any=r"seq_read|established_get_first|tcp_seq_")),
    ("kernel: other system calls", dict(dso=r"kernel", any=r"do_syscall_64")),
    ("kernel: interrupts, scheduling, other", dict(dso=r"kernel")),
    # User space.
    ("protobuf parse", dict(any=r"ParseMessage|MergePartialFromCodedStream|_InternalParse|"
                            r"ParseFrom|MergeFrom|ParseContext", dso=r"protobuf|ssm_|libc")),
    ("protobuf serialize", dict(any=r"SerializeMessage|_InternalSerialize|SerializeTo|ByteSizeLong|"
                                r"SerializeWithCachedSizes|GenericSerialize",
                                dso=r"protobuf|ssm_|libc|grpc")),
    ("malloc / free", dict(leaf=r"^(malloc|free|cfree|_int_malloc|_int_free|malloc_consolidate|"
                           r"operator new|operator delete|tcache|__libc_malloc|__libc_free|"
                           r"unlink_chunk|_int_realloc|realloc|calloc)")),
    ("ssm server: reactor, codec, sessions, metrics", dict(dso=r"ssm_server$")),
    ("ssm client: bench loop", dict(dso=r"ssm_client$")),
    ("gRPC (core, C++ API, gpr)", dict(dso=r"libgrpc|libgpr|libaddress_sorting|libupb")),
    ("gRPC (core, C++ API, gpr)", dict(leaf=r"memmove|memcpy|memset", any=r"grpc")),
    ("absl (mutex, clock)", dict(dso=r"libabsl")),
    ("protobuf (other)", dict(dso=r"protobuf")),
    ("prometheus-cpp", dict(dso=r"prometheus")),
    ("libc (other)", dict(dso=r"libc\.so|ld-linux|vdso|libstdc|libm\.so")),
]
COMPILED = [(name, {k: re.compile(v) for k, v in rule.items()}) for name, rule in RULES]


def classify(frames):
    """frames: [(symbol, dso)], leaf first."""
    leaf_sym, leaf_dso = frames[0] if frames else ("?", "?")
    for name, rule in COMPILED:
        if "leaf" in rule and not rule["leaf"].search(leaf_sym):
            continue
        if "dso" in rule and not rule["dso"].search(leaf_dso):
            continue
        if "any" in rule and not any(rule["any"].search(s) for s, _ in frames):
            continue
        return name
    return "other: " + os.path.basename(leaf_dso)


FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


def perf_categories(data, perf):
    """Counts of samples per category in a perf.data file."""
    out = subprocess.run([perf, "script", "-i", data, "-F", "comm,tid,ip,sym,dso"],
                         capture_output=True, text=True, errors="replace")
    counts = collections.Counter()
    frames = []
    for line in out.stdout.splitlines() + [""]:
        if not line.strip():
            if frames:
                counts[classify(frames)] += 1
            frames = []
            continue
        m = FRAME.match(line)
        if m:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
            frames.append((sym, m.group(2)))
    return counts


def server_address(args, tmp):
    """Where the server listens: a free loopback port, or with --unix a
    Unix-domain socket in the scratch folder."""
    if args.unix:
        return "unix:" + os.path.join(tmp, "ssm.sock")
    return "127.0.0.1:%d" % free_port()


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def print_table(title, counts, us_per_chunk):
    total = sum(counts.values())
    print("\n%s: %.1f us of CPU per chunk, %d samples" % (title, us_per_chunk, total))
    print("  %-62s %6s %8s" % ("category", "share", "us/chunk"))
    for name, n in counts.most_common():
        print("  %-62s %5.1f%% %8.2f" % (name, 100.0 * n / total, us_per_chunk * n / total))


class PerfRun:
    """One bench run with perf on both processes: the server started (and
    warmed up), `perf <perf_args> -o FILE -p PID` attached to it, the bench
    run under `perf <perf_args> -o FILE --`, then everything stopped. Keeps
    the bench's report, the two perf files, the load average before the
    run, and the server's CPU ticks per thread name before and after."""

    def __init__(self, args, server, client, bench, tmp, perf_args, suffix):
        perf = shutil.which("perf")
        if perf is None:
            sys.exit("profile_stream: perf is not installed (apt-get install linux-perf)")
        self.perf = perf
        self.server_data = os.path.join(tmp, "server." + suffix)
        self.client_data = os.path.join(tmp, "client." + suffix)
        address = server_address(args, tmp)
        proc = subprocess.Popen([server, "--address=" + address, "--metrics_port=0",
                                 "--model_repository=" + args.models] + args.server_flags,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy("profile_stream", client, address, proc, tries=600)
            subprocess.run([client, "--address=" + address, "bench", "--concurrency=8",
                            "--steps=200"], capture_output=True, check=True)  # warm-up
            tool = [perf] + perf_args
            srv = subprocess.Popen(tool + ["-o", self.server_data, "-p", str(proc.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # perf attaches
            self.load = load_average()
            self.ticks_before = thread_ticks(proc.pid)
            # (ssm_client exits 1 when a stream failed; the report says so.)
            out = subprocess.run(tool + ["-o", self.client_data, "--", client,
                                         "--address=" + address, "bench", "--json",
                                         "--server_pid=%d" % proc.pid] + bench,
                                 capture_output=True, text=True)
            self.ticks_after = thread_ticks(proc.pid)
            srv.send_signal(signal.SIGINT)
            srv.wait()
        finally:
            stop(proc)
        self.report = json.loads(out.stdout)


def run_perf(args, server, client, bench, tmp):
    run = PerfRun(args, server, client, bench, tmp,
                  ["record", "-q", "-e", "cpu-clock", "-F", str(args.frequency),
                   "--call-graph", "dwarf,8192"], "perf")
    report = run.report
    print("bench %s: %.0f steps/s, p50 %.3f ms, p99 %.3f ms, %d errors%s, load average %.2f "
          "before (perf's sampling costs a few percent)" % (
              " ".join(bench), report["steps_per_second"], report["latency_us"]["p50"] / 1e3,
              report["latency_us"]["p99"] / 1e3, report["errors"],
              " (first: %s)" % report["first_error"] if report["errors"] else "", run.load))
    print_table("server", perf_categories(run.server_data, run.perf),
                report["server_cpu_us_per_completed"])
    print_table("client (ssm_client bench)", perf_categories(run.client_data, run.perf),
                report["client_cpu_us_per_completed"])


SYSCALLS = ["sendmsg", "recvmsg", "epoll_wait", "futex", "write", "read"]


def thread_ticks(pid):
    """CPU clock ticks (user + system) of each of pid's threads, summed
    per thread name."""
    ticks = collections.Counter()
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[name] += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks


def syscall_counts(path, completed):
    counts = {}
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_"):
                counts[fields[2][len("syscalls:sys_enter_"):]] = int(fields[0]) / completed
    return counts


def run_syscalls(args, server, client, bench, tmp):
    events = ",".join("syscalls:sys_enter_" + name for name in SYSCALLS)
    run = PerfRun(args, server, client, bench, tmp, ["stat", "-x", ",", "-e", events], "stat")
    report = run.report
    completed = report["completed"]
    print("bench %s: %.0f steps/s, p50 %.3f ms, p99 %.3f ms, %d errors, load average %.2f "
          "before (perf's counting costs a little)" % (
              " ".join(bench), report["steps_per_second"], report["latency_us"]["p50"] / 1e3,
              report["latency_us"]["p99"] / 1e3, report["errors"], run.load))
    for side, path in (("server", run.server_data), ("client", run.client_data)):
        counts = syscall_counts(path, completed)
        print("%s system calls per chunk: %s" % (side, ", ".join(
            "%s %.2f" % (name, counts.get(name, 0.0)) for name in SYSCALLS)))
    hz = os.sysconf("SC_CLK_TCK")
    before, after = run.ticks_before, run.ticks_after
    busy = {name: (after[name] - before.get(name, 0)) * 1e6 / hz / completed
            for name in after if after[name] > before.get(name, 0)}
    print("server CPU per chunk by thread (us, %d-tick resolution): %s" % (hz, ", ".join(
        "%s %.1f" % (name, us) for name, us in sorted(busy.items(), key=lambda kv: -kv[1]))))


# Functions whose inclusive instructions per chunk --callgrind prints.
CALLGRIND_FUNCTIONS = [
    ("the transport's processor (parse, run, serialize, queue the write)",
     r"PipelinedStream<.*>::(Process|RunProcessor)\("),
    ("  SessionManager::Entry::Run (one session's chunk)", r"SessionManager::Entry::Run\("),
    ("  gathered steps (the step batcher's passes)", r"StepBatcher::Run\(|Entry::RunBatch"),
    ("    ssm::Session::Run", r"ssm::Session::Run\("),
    ("      the stack's pass (Model::Advance)", r"S4Model::Advance|S4Model::AdvanceBatch"),
    ("        recurrent steps (SsmStepper)", r"ssm::SsmStepper::Run"),
    ("        linears (encoder, GLU, decoder)", r"Linear::Apply"),
    ("        activations (erf, exp)", r"Activate\("),
    ("  parse a request", r"ssm::server::ParseMessage"),
    ("  serialize a response", r"ssm::server::SerializeMessage"),
    ("  chunk values in (float to double, finite)", r"ssm::server::ReadFiniteValues"),
    ("  outputs out (double to float)", r"ssm::server::WriteSequenceTensor"),
    ("the read callback (OnReadDone)", r"PipelinedStream<.*>::OnReadDone"),
    ("the write callback (OnWriteDone)", r"PipelinedStream<.*>::OnWriteDone"),
    ("gRPC: HTTP/2 reads", r"grpc_chttp2_perform_read"),
    ("gRPC: starting batches (reads, writes)", r"^grpc_call_start_batch"),
    ("memcpy / memmove, everywhere", r"__memcpy_avx_unaligned_erms|__memmove_avx"),
    ("malloc, everywhere", r"^malloc$"),
    ("free, everywhere", r"^free$"),
    ("the connection guard's scans", r"ConnectionGuard::ScanOnce"),
]


def small_repository(models, tmp):
    """A repository holding only s4-demo with max_length 256: the same
    weights and the same recurrent step (chunks below 64 steps never touch
    the kernels), but its convolution kernels, which loading builds, are
    64 times shorter, so the server starts in seconds under valgrind."""
    repo = os.path.join(tmp, "models")
    os.makedirs(os.path.join(repo, "s4-demo"), exist_ok=True)
    with open(os.path.join(models, "s4-demo", "config.pbtxt")) as f:
        config = re.sub(r"max_length: \d+", "max_length: 256", f.read())
    with open(os.path.join(repo, "s4-demo", "config.pbtxt"), "w") as f:
        f.write(config)
    link = os.path.join(repo, "s4-demo", "1")
    if not os.path.exists(link):
        os.symlink(os.path.join(models, "s4-demo", "1"), link)
    return repo


def run_callgrind(args, server, client, bench, tmp):
    valgrind = shutil.which("valgrind") or sys.exit("profile_stream: valgrind is not installed")
    address = server_address(args, tmp)
    out_file = os.path.join(tmp, "callgrind.out")
    proc = subprocess.Popen([valgrind, "--tool=callgrind", "--callgrind-out-file=" + out_file,
                             "--instr-atstart=no",
                             server, "--address=" + address, "--metrics_port=0",
                             "--model_repository=" + small_repository(args.models, tmp)] +
                            args.server_flags,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy("profile_stream", client, address, proc, tries=600)
        subprocess.run([client, "--address=" + address, "bench", "--concurrency=8",
                        "--steps=50", "--max_seconds=120"], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True,
                       check=True)
        out = subprocess.run([client, "--address=" + address, "bench", "--json",
                              "--max_seconds=600"] + bench,
                             capture_output=True, text=True)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True,
                       check=True)
    finally:
        stop(proc)
    report = json.loads(out.stdout)
    chunks = report["completed"]
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                          out_file], capture_output=True, text=True, check=True).stdout
    total = None
    rows = []
    for line in ann.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(?:\*\s+)?PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(?:\*\s+)?(?:[^:\s]*:)?(.*?)\s*"
                     r"(?:\[[^\]]*\])?$", line)
        if m and total is not None:
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    print("bench %s under callgrind: %d chunks; server user-space instructions per chunk "
          "(kernel time is not counted):" % (" ".join(bench), chunks))
    print("  %-70s %10s" % ("total", "{:,.0f}".format(total / chunks)))
    for label, pattern in CALLGRIND_FUNCTIONS:
        matches = [n for n, f in rows if re.search(pattern, f)]
        if matches:
            print("  %-70s %10s" % (label, "{:,.0f}".format(max(matches) / chunks)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--server", help="another ssm_server to profile (default: the build's); "
                    "the client is always the build's")
    ap.add_argument("--bench", default="--concurrency=64 --steps=2000 --inflight=1",
                    help="ssm_client bench flags (stream mode, s4-demo by default)")
    ap.add_argument("--frequency", type=int, default=499, help="perf samples per second")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--unix", action="store_true",
                    help="serve on a Unix-domain socket instead of loopback TCP")
    ap.add_argument("--syscalls", action="store_true",
                    help="count system calls and the server threads' CPU instead of sampling")
    ap.add_argument("--keep", help="keep the profiles in this folder")
    ap.add_argument("server_flags", nargs="*", help="after --: extra ssm_server flags")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args.models = os.path.join(root, "models")
    server = os.path.join(root, args.server) if args.server else os.path.join(
        root, args.build, "server", "ssm_server")
    client = os.path.join(root, args.build, "client", "ssm_client")
    for exe in (server, client):
        if not os.access(exe, os.X_OK):
            sys.exit("profile_stream: build %s first" % exe)
    bench = ["--mode=stream"] + shlex.split(args.bench)
    if args.callgrind and "--steps" not in args.bench:
        bench.append("--steps=200")
    tmp = args.keep or tempfile.mkdtemp(prefix="ssm-profile-")
    os.makedirs(tmp, exist_ok=True)
    try:
        run = run_callgrind if args.callgrind else run_syscalls if args.syscalls else run_perf
        run(args, server, client, bench, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
