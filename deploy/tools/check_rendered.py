#!/usr/bin/python3
"""Checks a rendered ssmserve deployment (`kustomize build deploy/...`).

    check_rendered.py RENDERED.yaml [--server-main server/ssm_server_main.cc]
        [--models-dir models] [--namespace NS] [--image IMAGE]
        [--models-volume] [--secure] [--durable]
    check_rendered.py --self-test RENDERED.yaml [same options]

Offline, with no cluster: it reads the YAML stream and checks what
deploy/README.md promises of it (the kinds, the probes, ports, the drain and
grace periods, security, resources against the measured memory budget, the
Services' selectors, HPA and PDB; with --durable, the session store: the
flag, where it points, the Redis it points at). Exit 0 and one summary line when all hold;
exit 1 listing every failed check otherwise.

--self-test breaks the rendering in one way at a time (a probe that is not
gRPC, a grace period shorter than the drain, a misspelt flag, ...) and checks
that each break is caught, so that the checks cannot pass vacuously.

Needs Debian's python3-yaml (scripts/install-deps.sh --test).
"""

import argparse
import copy
import math
import os
import re
import sys

import yaml

GRPC_PORT = 50051
METRICS_PORT = 9464
# Flags naming files the server reads that hold secrets or decide who may
# do what (TLS keys, the callers file, snapshot keys): they must come from
# Secret volumes, read-only and without subPath (a subPath mount never sees
# a Secret's update, so rotation would need a restart).
SECRET_FILE_FLAGS = ("tls_cert", "tls_key", "tls_client_ca", "auth_callers",
                     "snapshot_keys")
# Abseil's own flags, accepted by every absl::ParseCommandLine binary.
ABSL_BUILTIN_FLAGS = {"flagfile", "fromenv", "tryfromenv", "undefok"}

# The memory budget (deploy/README.md, "Resources"), measured with the
# shipped repository on the development machine (VmRSS/VmHWM of ssm_server):
IDLE_BYTES = 62e6             # idle after start-up
SPECTRA_BYTES = 70e6          # s4-demo's kernel spectra at max length
SESSION_BYTES = 86 * 1024     # one idle batch-1 s4-demo session
SESSION_BYTES_STORED = 128 * 1024  # the same with --session_store: a copy of
                              # the state until its first write, and the
                              # write buffers the allocator keeps (+35-45
                              # KiB measured, bench/store_load.py)
ROW_BYTES = 58.5e6            # one batch row of a max-length s4-demo call
PASS_ROWS = 2                 # rows of it held at once: a call runs in passes
                              # of 32768 sequence x step rows (= 2 x 16384)
IO_BYTES_PER_VALUE = 16       # a call's inputs and outputs: float32 on the
                              # wire, double inside (measured ~12 B a value)
VALUES_PER_STEP = 4           # the largest d_input + d_output (legt-delay)
HEADROOM = 1.2                # the limit must exceed the budget by 20 %

# Durable sessions (--durable): the server's own rules for its store flags
# (server/ssm_server.cc) and what the Redis the overlay runs must keep.
REDIS_PORT = 6379
# What an env value read from a Secret expands to here.
SECRET_VALUE = "secret:"
REDIS_URL = re.compile(r"redis://(?:[^@/]*@)?([^:/@]+):(\d+)(?:/(\d+))?")

DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                  "h": 3600.0}
QUANTITY_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "": 1,
}


def parse_duration(text):
    """Abseil's duration syntax ('20s', '1h30m', '500ms') in seconds."""
    if text in ("0", "inf"):
        return 0.0 if text == "0" else math.inf
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def parse_quantity(text):
    """A Kubernetes resource quantity ('1Gi', '500m', '2') as a number."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m|)", str(text))
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    return float(m.group(1)) * QUANTITY_SUFFIXES[m.group(2)]


def server_flags(main_cc):
    """The flags ssm_server defines (ABSL_FLAG(type, name, ...))."""
    with open(main_cc, encoding="utf-8") as f:
        names = set(re.findall(r"ABSL_FLAG\(\s*[\w:<>]+\s*,\s*(\w+)\s*,",
                               f.read()))
    if not names:
        raise SystemExit(f"check_rendered: no ABSL_FLAG found in {main_cc}")
    return names


class Checker:
    def __init__(self, docs, opts):
        self.docs = docs
        self.opts = opts
        self.errors = []
        self.tls = False
        # The session store's objects, when the rendering runs one: its
        # StatefulSet and the Services that select its pods (not the
        # server's).
        self.stores = self.of_kind("StatefulSet")
        store_labels = [s["spec"]["template"]["metadata"].get("labels", {})
                        for s in self.stores]
        self.store_services = [
            s for s in self.of_kind("Service")
            if s["spec"].get("selector") and any(
                all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
                for labels in store_labels)]
        self.server_services = [s for s in self.of_kind("Service")
                                if not any(s is t for t in self.store_services)]

    def error(self, message):
        self.errors.append(message)

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind):
        found = self.of_kind(kind)
        if len(found) != 1:
            self.error(f"expected exactly one {kind}, found {len(found)}")
            return None
        return found[0]

    # -- the pieces ---------------------------------------------------------

    def check_kinds(self):
        allowed = {"Deployment", "Service", "HorizontalPodAutoscaler",
                   "PodDisruptionBudget", "Namespace", "PersistentVolumeClaim"}
        if getattr(self.opts, "durable", False):
            # The session store's Redis, its configuration and who may
            # reach it.
            allowed |= {"StatefulSet", "ConfigMap", "NetworkPolicy"}
        for d in self.docs:
            if d.get("kind") not in allowed:
                self.error(f"unexpected kind {d.get('kind')!r} "
                           f"({d.get('metadata', {}).get('name')})")
        for kind, api in (("Deployment", "apps/v1"),
                          ("HorizontalPodAutoscaler", "autoscaling/v2"),
                          ("PodDisruptionBudget", "policy/v1"),
                          ("StatefulSet", "apps/v1"),
                          ("NetworkPolicy", "networking.k8s.io/v1")):
            for d in self.of_kind(kind):
                if d.get("apiVersion") != api:
                    self.error(f"{kind} has apiVersion {d.get('apiVersion')}, "
                               f"want {api}")
        if len(self.server_services) != 2:
            self.error("expected two Services (headless and ClusterIP) for the "
                       f"server, found {len(self.server_services)}")

    def container(self, deployment):
        containers = deployment["spec"]["template"]["spec"].get(
            "containers", [])
        named = [c for c in containers if c.get("name") == "ssm-server"]
        if len(named) != 1:
            self.error("the Deployment needs one container named ssm-server")
            return None
        return named[0]

    def expand_args(self, container, limits):
        """The container's args with $(VAR) expanded as the kubelet does."""
        env = {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = str(e["value"])
            cm = e.get("valueFrom", {}).get("configMapKeyRef")
            if cm:
                found = [d for d in self.of_kind("ConfigMap")
                         if d["metadata"].get("name") == cm.get("name")]
                value = found[0].get("data", {}).get(cm.get("key")) if found else None
                if value is None:
                    self.error(f"env {e['name']} reads key {cm.get('key')!r} of "
                               f"ConfigMap {cm.get('name')!r}, which the "
                               "rendering does not have")
                else:
                    env[e["name"]] = str(value)
            secret = e.get("valueFrom", {}).get("secretKeyRef")
            if secret:
                # Not in the rendering (Secrets never are): known to be
                # set, not what it says.
                env[e["name"]] = f"{SECRET_VALUE}{secret.get('name')}/{secret.get('key')}"
            ref = e.get("valueFrom", {}).get("resourceFieldRef")
            if ref:
                value = parse_quantity(limits.get(ref["resource"].split(".")[1],
                                                  "0"))
                env[e["name"]] = str(math.ceil(
                    value / parse_quantity(ref.get("divisor", "1"))))
        out = []
        for arg in container.get("args", []):
            def sub(m):
                if m.group(1) not in env:
                    self.error(f"arg {arg!r} uses $({m.group(1)}), which no "
                               "env entry defines")
                return env.get(m.group(1), m.group(0))
            out.append(re.sub(r"\$\((\w+)\)", sub, arg))
        return out

    def parse_flags(self, args, known):
        flags = {}
        for arg in args:
            m = re.fullmatch(r"--(\w+)=(.*)", arg)
            if not m:
                self.error(f"arg {arg!r} is not --flag=value")
                continue
            name, value = m.groups()
            if name not in known:
                self.error(f"--{name} is not a flag of ssm_server")
            flags[name] = value
        return flags

    def check_deployment(self, hpa):
        dep = self.one("Deployment")
        if dep is None:
            return None, None
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        selector = spec.get("selector", {}).get("matchLabels", {})
        if not selector or any(labels.get(k) != v
                               for k, v in selector.items()):
            self.error("the Deployment's selector does not match its pod "
                       "labels")
        if hpa is not None and "replicas" in spec:
            self.error("the Deployment sets spec.replicas although an HPA "
                       "owns it (kubectl apply would reset it)")
        rolling = spec.get("strategy", {}).get("rollingUpdate", {})
        if str(rolling.get("maxUnavailable")) != "0":
            self.error("the rolling update must keep capacity "
                       "(maxUnavailable: 0)")

        c = self.container(dep)
        if c is None:
            return dep, None
        if not c.get("image"):
            self.error("the container has no image")
        if self.opts.image and c.get("image") != self.opts.image:
            self.error(f"image is {c.get('image')!r}, want {self.opts.image!r}")

        resources = c.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get(
            "limits", {})
        args = self.expand_args(c, limits)
        flags = self.parse_flags(args, self.opts.known_flags)
        self.tls = bool(flags.get("tls_cert"))
        if getattr(self.opts, "secure", False):
            for flag in ("tls_cert", "tls_key", "tls_client_ca", "auth_callers",
                         "snapshot_keys", "health_address"):
                if not flags.get(flag):
                    self.error(f"--{flag} is missing (--secure: TLS, callers, "
                               "signed snapshots and a health port)")

        # Listening: all interfaces, the ports the Services and probes use.
        address = flags.get("address", "")
        if not re.fullmatch(rf"(0\.0\.0\.0|\[::\]):{GRPC_PORT}", address):
            self.error(f"--address={address!r}: want 0.0.0.0:{GRPC_PORT} or "
                       f"[::]:{GRPC_PORT} (all interfaces of the pod)")
        if flags.get("metrics_port") != str(METRICS_PORT):
            self.error(f"--metrics_port must be {METRICS_PORT}")
        if flags.get("metrics_address") not in ("0.0.0.0", "::"):
            self.error("--metrics_address must be 0.0.0.0 (scrapeable)")
        ports = {p.get("name"): p.get("containerPort")
                 for p in c.get("ports", [])}
        if ports.get("grpc") != GRPC_PORT:
            self.error(f"container port 'grpc' must be {GRPC_PORT}, got "
                       f"{ports.get('grpc')}")
        if ports.get("metrics") != METRICS_PORT:
            self.error(f"container port 'metrics' must be {METRICS_PORT}, got "
                       f"{ports.get('metrics')}")

        # Drain and grace.
        drain = parse_duration(flags.get("drain_timeout", "20s"))
        if getattr(self.opts, "durable", False):
            self.check_store_flags(flags, pod, c, drain)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if not grace > drain:
            self.error(f"terminationGracePeriodSeconds {grace} must exceed "
                       f"--drain_timeout ({drain:g} s)")
        for flag in ("max_connection_age", "max_connection_age_grace"):
            if flag not in flags:
                self.error(f"--{flag} is missing (long-lived connections "
                           "would never rebalance)")
                continue
            try:
                if parse_duration(flags[flag]) <= 0:
                    self.error(f"--{flag} must be > 0")
            except ValueError as e:
                self.error(f"--{flag}: {e}")

        # Probes: Kubernetes' native gRPC probes on grpc.health.v1, on the
        # gRPC port, or on the plaintext health-only port when there is one
        # (the kubelet's gRPC probes cannot speak TLS).
        probe_port = self.check_health_port(flags, ports)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if not probe or "grpc" not in probe:
                self.error(f"{kind} must be a gRPC probe (grpc: port "
                           f"{probe_port})")
                continue
            if probe_port is not None and probe["grpc"].get("port") != probe_port:
                self.error(f"{kind} probes port {probe['grpc'].get('port')}, "
                           f"want {probe_port}")
            service = probe["grpc"].get("service", "")
            if service != "" and kind == "livenessProbe":
                self.error("livenessProbe must ask about the server (\"\"), "
                           "not one model")
            if service != "":
                m = re.fullmatch(r"ssm\.v1\.Inference/([\w.-]+)", service)
                if not m:
                    self.error(f"{kind} asks about {service!r}: want \"\" or "
                               "ssm.v1.Inference/<model>")
                elif self.opts.models_dir and not os.path.isdir(
                        os.path.join(self.opts.models_dir, m.group(1))):
                    self.error(f"{kind} asks about model {m.group(1)!r}, "
                               f"which {self.opts.models_dir} does not have")
        live = c.get("livenessProbe") or {}
        patience = live.get("periodSeconds", 10) * live.get(
            "failureThreshold", 3)
        if not patience > drain:
            self.error(f"livenessProbe gives up after {patience} s, within "
                       f"--drain_timeout ({drain:g} s): a draining pod would "
                       "be restarted")

        # Security.
        psc, csc = pod.get("securityContext", {}), c.get(
            "securityContext", {})
        if not psc.get("runAsNonRoot"):
            self.error("pod securityContext.runAsNonRoot must be true")
        if psc.get("runAsUser", 1) == 0 or csc.get("runAsUser", 1) == 0:
            self.error("runAsUser must not be 0")
        if not csc.get("readOnlyRootFilesystem"):
            self.error("readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            self.error("allowPrivilegeEscalation must be false")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            self.error("capabilities must drop ALL")
        if pod.get("automountServiceAccountToken") is not False:
            self.error("automountServiceAccountToken must be false (the "
                       "server never calls the API server)")

        # Resources against the memory budget of these flags.
        for table, name in ((requests, "requests"), (limits, "limits")):
            for r in ("cpu", "memory"):
                if r not in table:
                    self.error(f"resources.{name}.{r} is missing")
        try:
            for r in ("cpu", "memory"):
                if r in requests and r in limits and parse_quantity(
                        requests[r]) > parse_quantity(limits[r]):
                    self.error(f"resources.requests.{r} exceeds the limit")
            threads = int(flags.get("threads", "0"))
            cpu_limit = parse_quantity(limits.get("cpu", "0"))
            if threads != math.ceil(cpu_limit):
                self.error(f"--threads={threads} should be the CPU limit "
                           f"({cpu_limit:g})")
            max_batch = int(flags.get("max_batch", "64"))
            max_length = int(flags.get("max_unary_length", "65536"))
            per_worker = (min(max_batch, PASS_ROWS) * ROW_BYTES
                          + max_batch * max_length * VALUES_PER_STEP
                          * IO_BYTES_PER_VALUE)
            budget = (IDLE_BYTES + SPECTRA_BYTES
                      + int(flags.get("max_sessions", "1024"))
                      * (SESSION_BYTES_STORED if flags.get("session_store") else SESSION_BYTES)
                      + max(threads, 1) * per_worker)
            memory = parse_quantity(limits.get("memory", "0"))
            if memory < HEADROOM * budget:
                self.error(
                    f"memory limit {limits.get('memory')} is below "
                    f"{HEADROOM:g} x the budget of these flags "
                    f"({budget / 2**20:.0f} MiB: idle, spectra, sessions, "
                    "threads x (a call's rows in one pass + its inputs and "
                    "outputs at max_batch x max_unary_length))")
            if parse_quantity(requests.get("memory", "0")) != memory:
                self.error("memory request must equal the limit (a pod that "
                           "holds sessions is evicted last)")
        except ValueError as e:
            self.error(f"resources or flags: {e}")

        # Prometheus.
        notes = spec["template"]["metadata"].get("annotations", {})
        want = {"prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics"}
        for k, v in want.items():
            if notes.get(k) != v:
                self.error(f"pod annotation {k} must be {v!r}, got "
                           f"{notes.get(k)!r}")

        # Volumes: every mount has its volume; /tmp is writable; the
        # repository is where a mount (or the image) has it.
        volumes = {v.get("name") for v in pod.get("volumes", [])}
        mounts = {}
        for ctr in pod.get("containers", []) + pod.get("initContainers", []):
            for m in ctr.get("volumeMounts", []):
                if m.get("name") not in volumes:
                    self.error(f"{ctr.get('name')} mounts {m.get('name')!r}, "
                               "which is no volume")
        for m in c.get("volumeMounts", []):
            mounts[m["mountPath"]] = m
        if "/tmp" not in mounts:
            self.error("/tmp must be a volume (the root file system is "
                       "read-only)")
        self.check_secret_files(pod, c, flags)
        repository = flags.get("model_repository", "")
        if not repository.startswith("/"):
            self.error(f"--model_repository={repository!r} must be absolute")
        if self.opts.models_volume:
            mount = mounts.get(repository)
            if mount is None:
                self.error(f"--model_repository={repository} is not a mounted "
                           "volume")
            elif not mount.get("readOnly"):
                self.error("the model volume must be mounted read-only")
        return dep, labels

    def check_health_port(self, flags, ports):
        """The port the probes must ask: --health_address's when set (all
        interfaces, declared as the container port 'health'), else the
        gRPC port, which then must not serve TLS."""
        tls = bool(flags.get("tls_cert") or flags.get("tls_key"))
        if tls and not (flags.get("tls_cert") and flags.get("tls_key")):
            self.error("--tls_cert and --tls_key go together")
        if flags.get("tls_client_auth", "none") not in ("none", "request",
                                                         "require"):
            self.error("--tls_client_auth must be none, request or require")
        elif (flags.get("tls_client_auth", "none") != "none"
              and not flags.get("tls_client_ca")):
            self.error("--tls_client_auth verifies client certificates: it "
                       "needs --tls_client_ca")
        health = flags.get("health_address")
        if not health:
            if tls:
                self.error("the gRPC port serves TLS and the kubelet's gRPC "
                           "probes cannot speak TLS: set --health_address "
                           "(a plaintext health-only port) and probe it")
            return GRPC_PORT
        m = re.fullmatch(r"(0\.0\.0\.0|\[::\]):(\d+)", health)
        if not m:
            self.error(f"--health_address={health!r}: want 0.0.0.0:<port> or "
                       "[::]:<port> (the kubelet probes the pod's IP)")
            return None
        port = int(m.group(2))
        if port in (GRPC_PORT, METRICS_PORT):
            self.error(f"--health_address port {port} is taken by gRPC or "
                       "metrics")
        if ports.get("health") != port:
            self.error(f"container port 'health' must be {port} "
                       f"(--health_address), got {ports.get('health')}")
        return port

    def check_secret_files(self, pod, c, flags):
        secret_volumes = {v.get("name") for v in pod.get("volumes", [])
                          if "secret" in v}
        for flag in SECRET_FILE_FLAGS:
            path = flags.get(flag)
            if not path:
                continue
            if not path.startswith("/"):
                self.error(f"--{flag}={path!r} must be absolute")
                continue
            # The innermost mount holding the path.
            holding = [m for m in c.get("volumeMounts", [])
                       if path.startswith(m.get("mountPath", "").rstrip("/") + "/")]
            mount = max(holding, key=lambda m: len(m["mountPath"]), default=None)
            if mount is None or mount.get("name") not in secret_volumes:
                self.error(f"--{flag}={path} is not on a Secret volume "
                           "(secrets and the callers file come from Secrets, "
                           "never the image or a ConfigMap)")
                continue
            if not mount.get("readOnly"):
                self.error(f"the Secret volume {mount['name']!r} holding "
                           f"--{flag} must be mounted read-only")
            if mount.get("subPath") or mount.get("subPathExpr"):
                self.error(f"the Secret volume {mount['name']!r} holding "
                           f"--{flag} is mounted with subPath, which never "
                           "sees the Secret's updates (no rotation)")

    def check_store_flags(self, flags, pod, c, drain):
        """--durable: the replicas keep sessions in a Redis
        (--session_store) that the rendering runs or names, with flags the
        server accepts, and a drain that has time for the last writes."""
        url = flags.get("session_store")
        if not url:
            self.error("--session_store is missing (--durable: sessions in a "
                       "store shared by the replicas)")
            return
        if url.startswith(SECRET_VALUE):
            # From a Secret (it holds a password): not visible here; the
            # rest is checked.
            host = port = None
        else:
            m = REDIS_URL.fullmatch(url)
            if not m:
                self.error(f"--session_store={url!r} is not "
                           "redis://[user:password@]host:port[/db]")
                return
            host, port = m.group(1), int(m.group(2))
            if host in ("localhost", "::1") or host.startswith("127."):
                self.error(f"--session_store={url}: a pod's loopback holds no "
                           "Redis (each replica would have its own store)")
        try:
            ttl = parse_duration(flags.get("session_ttl", "5m"))
            checkpoint = parse_duration(flags.get("session_checkpoint", "1s"))
            lease = parse_duration(flags.get("session_lease", "10s"))
            if not 0 < checkpoint <= ttl / 2:
                self.error(f"--session_checkpoint={flags.get('session_checkpoint')}"
                           " must be > 0 and at most half --session_ttl (the "
                           "server refuses to start otherwise)")
            if lease < 1:
                self.error("--session_lease must be >= 1s (the server refuses "
                           "to start otherwise)")
            if "session_store_timeout" in flags and parse_duration(
                    flags["session_store_timeout"]) <= 0:
                self.error("--session_store_timeout must be > 0")
        except ValueError as e:
            self.error(f"session store flags: {e}")
        # A drain lets the calls finish (--drain_timeout), then writes the
        # sessions it held (up to as long again) so others take them over.
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if not grace > 2 * drain:
            self.error(f"terminationGracePeriodSeconds {grace} must exceed "
                       f"--drain_timeout twice ({2 * drain:g} s): with a session "
                       "store the drain writes every session after the calls end")
        live = c.get("livenessProbe") or {}
        if not live.get("periodSeconds", 10) * live.get("failureThreshold", 3) > 2 * drain:
            self.error("livenessProbe gives up within 2 x --drain_timeout: a "
                       "draining pod writing its sessions would be restarted")
        if self.stores and host is not None:
            self.check_store(host, port)

    def check_store(self, host, port):
        """The Redis the rendering runs: one pod, reached by the Service the
        flag names, its append-only file on its own volume, never evicting,
        reached only by the replicas."""
        if len(self.stores) != 1:
            self.error(f"expected one StatefulSet (the session store), found "
                       f"{len(self.stores)}")
            return
        sts = self.stores[0]
        spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        if spec.get("replicas", 1) != 1:
            self.error(f"the session store has {spec.get('replicas')} replicas: "
                       "independent Redis pods would split the sessions and "
                       "their leases (one writer, or an external Redis with "
                       "replication)")
        # The flag's host is the Service, by its short or its full name.
        service = host.split(".")[0]
        named = [s for s in self.store_services
                 if s["metadata"]["name"] == service]
        if not named:
            self.error(f"--session_store names host {host!r}, which is not the "
                       "session store's Service (" + ", ".join(
                           s["metadata"]["name"] for s in self.store_services)
                       + ")")
        for s in named:
            if s["spec"].get("clusterIP") != "None":
                self.error(f"the session store's Service {service} must be "
                           "headless (the StatefulSet's governing Service)")
            if spec.get("serviceName") != service:
                self.error(f"the StatefulSet's serviceName is "
                           f"{spec.get('serviceName')!r}, not {service!r}")
            if not any(p.get("port") == port for p in s["spec"].get("ports", [])):
                self.error(f"--session_store port {port} is not a port of "
                           f"Service {service}")
        ctrs = pod.get("containers", [])
        if len(ctrs) != 1:
            self.error("the session store's pod needs one container")
            return
        c = ctrs[0]
        if not c.get("image"):
            self.error("the session store's container has no image")
        ports = [p.get("containerPort") for p in c.get("ports", [])]
        if port not in ports:
            self.error(f"the session store's container does not listen on "
                       f"{port} (ports {ports})")
        # Its configuration: the file the command names, from a ConfigMap.
        command = c.get("command", []) + c.get("args", [])
        conf_path = next((a for a in command if a.endswith(".conf")), None)
        mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        conf = None
        if conf_path:
            mount = mounts.get(os.path.dirname(conf_path))
            cm = volumes.get(mount["name"], {}).get("configMap") if mount else None
            found = [d for d in self.of_kind("ConfigMap")
                     if cm and d["metadata"].get("name") == cm.get("name")]
            if found:
                conf = found[0].get("data", {}).get(os.path.basename(conf_path))
        if conf is None:
            self.error("the session store's redis-server does not run a "
                       "configuration file from a ConfigMap")
            return
        settings = {}
        for line in conf.splitlines():
            words = line.split(None, 1)
            if words and not words[0].startswith("#"):
                settings[words[0].lower()] = words[1].strip() if len(words) > 1 else ""
        if settings.get("appendonly") != "yes":
            self.error("the session store must keep an append-only file "
                       "(appendonly yes): a restarted Redis would lose every "
                       "session")
        elif settings.get("appendfsync", "everysec") != "always":
            self.error("the session store must fsync each write before it "
                       "answers (appendfsync always): clients drop the chunks "
                       "before the durable position the servers report once "
                       "Redis answered")
        if settings.get("port", str(REDIS_PORT)) != str(port):
            self.error(f"redis.conf's port {settings.get('port')} is not "
                       f"--session_store's {port}")
        data_dir = settings.get("dir", "").rstrip("/")
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        mount = mounts.get(data_dir)
        if mount is None or mount.get("name") not in claims:
            self.error(f"redis.conf's dir {data_dir or '(none)'} is not on the "
                       "StatefulSet's own volume (volumeClaimTemplates): the "
                       "append-only file would die with the pod")
        if settings.get("maxmemory-policy", "noeviction") != "noeviction":
            self.error("redis.conf must not evict (maxmemory-policy "
                       "noeviction): every session key has an expiry, so "
                       "eviction would drop live sessions silently")
        limit = c.get("resources", {}).get("limits", {}).get("memory")
        maxmemory = settings.get("maxmemory")
        if not limit or not maxmemory:
            self.error("the session store needs maxmemory (redis.conf) under a "
                       "memory limit")
        else:
            try:
                mm = parse_quantity(maxmemory.replace("mb", "M").replace(
                    "gb", "G").replace("kb", "k"))
                if not mm < parse_quantity(limit):
                    self.error(f"redis.conf's maxmemory {maxmemory} is not below "
                               f"the container's limit {limit}: the pod would "
                               "be OOM-killed before Redis refuses writes")
            except ValueError as e:
                self.error(f"session store memory: {e}")
        psc = pod.get("securityContext", {})
        if not psc.get("runAsNonRoot"):
            self.error("the session store's pod securityContext.runAsNonRoot "
                       "must be true")
        # Who reaches it: with no TLS (Debian's hiredis) and no password,
        # only the replicas.
        server = next((d for d in self.of_kind("Deployment")), None)
        server_labels = (server["spec"]["template"]["metadata"].get("labels", {})
                         if server else {})
        guards = [n for n in self.of_kind("NetworkPolicy")
                  if all(labels.get(k) == v for k, v in n["spec"].get(
                      "podSelector", {}).get("matchLabels", {}).items())
                  and "Ingress" in n["spec"].get("policyTypes", ["Ingress"])]
        if not guards:
            self.error("no NetworkPolicy restricts who reaches the session "
                       "store (it has no TLS: only the replicas may)")
        for n in guards:
            for rule in n["spec"].get("ingress", []):
                peers = rule.get("from")
                if not peers or any(
                        "ipBlock" in p or "podSelector" not in p
                        or not p["podSelector"].get("matchLabels")
                        or any(server_labels.get(k) != v for k, v in
                               p["podSelector"]["matchLabels"].items())
                        for p in peers):
                    self.error(f"NetworkPolicy {n['metadata']['name']} lets "
                               "more than the replicas reach the session store")

    def check_services(self, pod_labels):
        services = self.server_services
        headless = [s for s in services
                    if s["spec"].get("clusterIP") == "None"]
        cluster = [s for s in services
                   if s["spec"].get("clusterIP") != "None"
                   and s["spec"].get("type", "ClusterIP") == "ClusterIP"]
        if len(headless) != 1:
            self.error("expected one headless Service (clusterIP: None) for "
                       "client-side round_robin")
        if len(cluster) != 1:
            self.error("expected one ClusterIP Service")
        for s in headless:
            if s["spec"].get("publishNotReadyAddresses"):
                self.error("the headless Service must not publish unready "
                           "(draining) pods")
        for s in services:
            name = s["metadata"]["name"]
            selector = s["spec"].get("selector", {})
            if pod_labels is not None and (not selector or any(
                    pod_labels.get(k) != v for k, v in selector.items())):
                self.error(f"Service {name} selects no ssmserve pod")
            grpc = [p for p in s["spec"].get("ports", [])
                    if p.get("name") == "grpc"]
            if self.tls and any(p.get("appProtocol") == "kubernetes.io/h2c"
                                for p in grpc):
                self.error(f"Service {name} calls its grpc port cleartext "
                           "(appProtocol kubernetes.io/h2c), but it serves TLS")
            if len(grpc) != 1 or grpc[0].get("port") != GRPC_PORT or grpc[
                    0].get("targetPort") not in ("grpc", GRPC_PORT):
                self.error(f"Service {name} needs port grpc {GRPC_PORT} -> "
                           "the pod's grpc port")

    def check_hpa(self, dep):
        hpa = self.one("HorizontalPodAutoscaler")
        if hpa is None or dep is None:
            return hpa
        spec = hpa["spec"]
        ref = spec.get("scaleTargetRef", {})
        if ref.get("kind") != "Deployment" or ref.get(
                "name") != dep["metadata"]["name"]:
            self.error(f"the HPA scales {ref.get('kind')}/{ref.get('name')}, "
                       f"not Deployment/{dep['metadata']['name']}")
        lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
        if lo < 2 or hi < lo:
            self.error(f"HPA replicas {lo}..{hi}: want min >= 2 (sessions "
                       "need somewhere to move) and max >= min")
        if not any(m.get("type") == "Resource"
                   and m.get("resource", {}).get("name") == "cpu"
                   for m in spec.get("metrics", [])):
            self.error("the HPA must scale on CPU")
        return hpa

    def check_pdb(self, pod_labels, hpa):
        pdb = self.one("PodDisruptionBudget")
        if pdb is None:
            return
        spec = pdb["spec"]
        selector = spec.get("selector", {}).get("matchLabels", {})
        if pod_labels is not None and (not selector or any(
                pod_labels.get(k) != v for k, v in selector.items())):
            self.error("the PodDisruptionBudget selects no ssmserve pod")
        if "maxUnavailable" not in spec and "minAvailable" not in spec:
            self.error("the PodDisruptionBudget sets neither maxUnavailable "
                       "nor minAvailable")
        if "minAvailable" in spec and hpa is not None and isinstance(
                spec["minAvailable"], int) and spec["minAvailable"] >= hpa[
                    "spec"].get("minReplicas", 1):
            self.error("PodDisruptionBudget minAvailable >= the HPA's "
                       "minReplicas: node drains would block forever")

    def check_namespace(self):
        if not self.opts.namespace:
            return
        for d in self.docs:
            if d.get("kind") == "Namespace":
                continue
            ns = d.get("metadata", {}).get("namespace")
            if ns != self.opts.namespace:
                self.error(f"{d.get('kind')}/{d['metadata'].get('name')} is "
                           f"in namespace {ns!r}, want "
                           f"{self.opts.namespace!r}")

    def run(self):
        self.check_kinds()
        hpa_doc = (self.of_kind("HorizontalPodAutoscaler") or [None])[0]
        dep, labels = self.check_deployment(hpa_doc)
        self.check_services(labels)
        hpa = self.check_hpa(dep)
        self.check_pdb(labels, hpa)
        self.check_namespace()
        return self.errors


# -- the self-test ----------------------------------------------------------

def _dep(docs):
    return next(d for d in docs if d["kind"] == "Deployment")


def _ctr(docs):
    return next(c for c in _dep(docs)["spec"]["template"]["spec"][
        "containers"] if c["name"] == "ssm-server")


def _set_arg(docs, flag, value):
    args = _ctr(docs)["args"]
    args[:] = [a for a in args if not a.startswith(f"--{flag}=")]
    if value is not None:
        args.append(f"--{flag}={value}")


def _headless(docs):
    return next(d for d in docs if d["kind"] == "Service"
                and d["spec"].get("clusterIP") == "None")


def _add_secret(docs, flag, read_only=True, sub_path=None):
    """A Secret volume 'extra' at /etc/extra, and --flag naming a file in
    it (mounted as given)."""
    pod = _dep(docs)["spec"]["template"]["spec"]
    pod.setdefault("volumes", []).append(
        {"name": "extra", "secret": {"secretName": "extra"}})
    mount = {"name": "extra", "mountPath": "/etc/extra", "readOnly": read_only}
    if sub_path:
        mount["subPath"] = sub_path
    _ctr(docs).setdefault("volumeMounts", []).append(mount)
    _set_arg(docs, flag, "/etc/extra/file")


def _tls_without_health(docs):
    _add_secret(docs, "tls_cert")
    _set_arg(docs, "tls_key", "/etc/extra/file")
    _set_arg(docs, "health_address", None)


MUTATIONS = [
    ("readiness probe over exec", "readinessProbe must be a gRPC probe",
     lambda d: _ctr(d).update(readinessProbe={
         "exec": {"command": ["ssm_client", "health"]}})),
    ("liveness probe on another port", "livenessProbe probes port",
     lambda d: _ctr(d)["livenessProbe"]["grpc"].update(port=8080)),
    ("readiness on an unknown health name", "readinessProbe asks about",
     lambda d: _ctr(d)["readinessProbe"]["grpc"].update(service="ready")),
    ("grace period equal to the drain", "must exceed --drain_timeout",
     lambda d: _dep(d)["spec"]["template"]["spec"].update(
         terminationGracePeriodSeconds=20)),
    ("drain longer than the grace period", "must exceed --drain_timeout",
     lambda d: _set_arg(d, "drain_timeout", "45s")),
    ("a misspelt flag", "is not a flag of ssm_server",
     lambda d: _set_arg(d, "max_conection_age", "10m")),
    ("no MAX_CONNECTION_AGE", "--max_connection_age is missing",
     lambda d: _set_arg(d, "max_connection_age", None)),
    ("loopback address", "--address=",
     lambda d: _set_arg(d, "address", "127.0.0.1:50051")),
    ("metrics port moved", "container port 'metrics'",
     lambda d: next(p for p in _ctr(d)["ports"] if p["name"] == "metrics").update(
         containerPort=9090)),
    ("no headless Service", "one headless Service",
     lambda d: _headless(d)["spec"].pop("clusterIP")),
    ("Service selecting nothing", "selects no ssmserve pod",
     lambda d: _headless(d)["spec"]["selector"].update(
         {"app.kubernetes.io/name": "other"})),
    ("root user", "runAsNonRoot must be true",
     lambda d: _dep(d)["spec"]["template"]["spec"]["securityContext"].update(
         runAsNonRoot=False)),
    ("writable root file system", "readOnlyRootFilesystem must be true",
     lambda d: _ctr(d)["securityContext"].update(
         readOnlyRootFilesystem=False)),
    ("memory limit below the budget", "is below",
     lambda d: _ctr(d)["resources"]["limits"].update(memory="256Mi")),
    ("max_batch raised without memory", "is below",
     lambda d: _set_arg(d, "max_batch", "64")),
    ("no Prometheus annotation", "prometheus.io/scrape",
     lambda d: _dep(d)["spec"]["template"]["metadata"]["annotations"].pop(
         "prometheus.io/scrape")),
    ("HPA on another Deployment", "the HPA scales",
     lambda d: next(x for x in d if x["kind"] == "HorizontalPodAutoscaler")[
         "spec"]["scaleTargetRef"].update(name="other")),
    ("PDB that blocks drains", "node drains would block",
     lambda d: next(x for x in d if x["kind"] == "PodDisruptionBudget")[
         "spec"].update(minAvailable=3)),
    ("liveness as impatient as the drain", "a draining pod would",
     lambda d: _ctr(d)["livenessProbe"].update(failureThreshold=1)),
    ("replicas fighting the HPA", "sets spec.replicas",
     lambda d: _dep(d)["spec"].update(replicas=3)),
    ("TLS with the probes on the TLS port", "cannot speak TLS",
     _tls_without_health),
    ("the callers file in the pod's /tmp", "is not on a Secret volume",
     lambda d: _set_arg(d, "auth_callers", "/tmp/callers.json")),
    ("a Secret mounted writable", "must be mounted read-only",
     lambda d: _add_secret(d, "snapshot_keys", read_only=False)),
    ("a Secret mounted by subPath", "never sees the Secret's updates",
     lambda d: _add_secret(d, "auth_callers", sub_path="callers.json")),
    ("the health port on loopback", "--health_address=",
     lambda d: _set_arg(d, "health_address", "127.0.0.1:50052")),
    ("a client CA mode without the CA", "needs --tls_client_ca",
     lambda d: (_set_arg(d, "tls_client_ca", None),
                _set_arg(d, "tls_client_auth", "require"))),
    ("a Secret committed in the rendering", "unexpected kind 'Secret'",
     lambda d: d.append({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": "ssmserve-tls"},
                         "data": {"tls.key": "c2VjcmV0"}})),
]


# Breaks of what --secure promises (deploy/overlays/secure).
SECURE_MUTATIONS = [
    ("no snapshot keys", "--snapshot_keys is missing",
     lambda d: _set_arg(d, "snapshot_keys", None)),
    ("no callers file", "--auth_callers is missing",
     lambda d: _set_arg(d, "auth_callers", None)),
    ("the grpc port called cleartext", "appProtocol kubernetes.io/h2c",
     lambda d: _headless(d)["spec"]["ports"][0].update(
         appProtocol="kubernetes.io/h2c")),
    ("a probe on the TLS port", "readinessProbe probes port 50051",
     lambda d: _ctr(d)["readinessProbe"]["grpc"].update(port=GRPC_PORT)),
    ("no health container port", "container port 'health'",
     lambda d: _ctr(d).update(ports=[p for p in _ctr(d)["ports"]
                                      if p["name"] != "health"])),
]


def _configmap(docs, prefix):
    """The ConfigMap whose name starts with `prefix` (kustomize appends a
    hash)."""
    return next(d for d in docs if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].startswith(prefix))


def _set_store_url(docs, url):
    _configmap(docs, "ssmserve-session-store")["data"]["url"] = url


def _sts(docs):
    return next(d for d in docs if d["kind"] == "StatefulSet")


def _redis_conf(docs, key, value):
    """Sets (value None: drops) one setting of the store's redis.conf."""
    cm = _configmap(docs, "ssmserve-redis-config")
    lines = [l for l in cm["data"]["redis.conf"].splitlines()
             if not l.split(None, 1)[:1] == [key]]
    if value is not None:
        lines.append(f"{key} {value}")
    cm["data"]["redis.conf"] = "\n".join(lines) + "\n"


def _network_policy(docs):
    return next(d for d in docs if d["kind"] == "NetworkPolicy")


# Breaks of what --durable promises (deploy/overlays/durable*).
DURABLE_MUTATIONS = [
    ("no session store", "--session_store is missing",
     lambda d: _set_arg(d, "session_store", None)),
    ("a store that is not Redis", "is not redis://",
     lambda d: _set_store_url(d, "memcached://cache:11211")),
    ("the store on the pod's loopback", "a pod's loopback holds no Redis",
     lambda d: _set_store_url(d, "redis://127.0.0.1:6379/0")),
    ("checkpoints rarer than half the TTL", "at most half --session_ttl",
     lambda d: _set_arg(d, "session_checkpoint", "3m")),
    ("a lease under a second", "--session_lease must be >= 1s",
     lambda d: _set_arg(d, "session_lease", "500ms")),
    ("the base's grace, too short for the last writes",
     "must exceed --drain_timeout twice",
     lambda d: _dep(d)["spec"]["template"]["spec"].update(
         terminationGracePeriodSeconds=30)),
    ("the base's liveness, restarting a pod that writes",
     "livenessProbe gives up within 2 x",
     lambda d: _ctr(d)["livenessProbe"].update(failureThreshold=4)),
    ("the store's ConfigMap missing", "which the rendering does not have",
     lambda d: d.remove(_configmap(d, "ssmserve-session-store"))),
]

# The same for an overlay that runs its own Redis (overlays/durable).
STORE_MUTATIONS = [
    ("the flag naming another Service", "which is not the session store's",
     lambda d: _set_store_url(d, "redis://ssmserve:6379/0")),
    ("the flag on another port", "is not a port of Service",
     lambda d: _set_store_url(d, "redis://ssmserve-redis:6380/0")),
    ("two Redis pods", "would split the sessions",
     lambda d: _sts(d)["spec"].update(replicas=2)),
    ("no append-only file", "appendonly yes",
     lambda d: _redis_conf(d, "appendonly", "no")),
    ("fsync once a second", "appendfsync always",
     lambda d: _redis_conf(d, "appendfsync", "everysec")),
    ("an eviction policy", "maxmemory-policy noeviction",
     lambda d: _redis_conf(d, "maxmemory-policy", "volatile-lru")),
    ("maxmemory above the limit", "is not below the container's limit",
     lambda d: _redis_conf(d, "maxmemory", "2gb")),
    ("the data on the pod's own file system", "is not on the StatefulSet's own volume",
     lambda d: _sts(d)["spec"].pop("volumeClaimTemplates")),
    ("the data in another folder", "is not on the StatefulSet's own volume",
     lambda d: _redis_conf(d, "dir", "/tmp")),
    ("no NetworkPolicy", "no NetworkPolicy restricts",
     lambda d: d.remove(_network_policy(d))),
    ("a NetworkPolicy open to all", "lets more than the replicas",
     lambda d: _network_policy(d)["spec"]["ingress"][0].update(
         {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})),
    ("a Service that is not the StatefulSet's", "serviceName",
     lambda d: _sts(d)["spec"].update(serviceName="other")),
]


def self_test(docs, opts):
    base = Checker(docs, opts).run()
    if base:
        print("check_rendered --self-test: the unbroken rendering already "
              "fails:\n  " + "\n  ".join(base))
        return 1
    missed = []
    mutations = MUTATIONS + (SECURE_MUTATIONS if opts.secure else [])
    if opts.durable:
        mutations += DURABLE_MUTATIONS
        if any(d["kind"] == "StatefulSet" for d in docs):
            mutations += STORE_MUTATIONS
    for name, expect, mutate in mutations:
        broken = copy.deepcopy(docs)
        mutate(broken)
        errors = Checker(broken, opts).run()
        if not any(expect in e for e in errors):
            missed.append(f"{name}: no error containing {expect!r} "
                          f"(got {errors})")
    if missed:
        print("check_rendered --self-test: breaks not caught:\n  "
              + "\n  ".join(missed))
        return 1
    print(f"check_rendered --self-test: all {len(mutations)} breaks caught")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rendered", help="kustomize build output ('-': stdin)")
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    parser.add_argument("--server-main",
                        default=os.path.join(root, "server", "ssm_server_main.cc"),
                        help="where ssm_server's flags are defined")
    parser.add_argument("--models-dir", default=os.path.join(root, "models"),
                        help="the shipped repository (per-model health names)")
    parser.add_argument("--namespace", help="every object must be in it")
    parser.add_argument("--image", help="the server container's image")
    parser.add_argument("--models-volume", action="store_true",
                        help="the repository must come from a read-only mount")
    parser.add_argument("--secure", action="store_true",
                        help="TLS, callers, signed snapshots and probes on a "
                        "health port must be on")
    parser.add_argument("--durable", action="store_true",
                        help="sessions in a Redis shared by the replicas "
                        "(--session_store); a StatefulSet in the rendering "
                        "is that Redis")
    parser.add_argument("--self-test", action="store_true",
                        help="check that each of a list of breaks is caught")
    opts = parser.parse_args()
    opts.known_flags = server_flags(opts.server_main) | ABSL_BUILTIN_FLAGS

    stream = sys.stdin if opts.rendered == "-" else open(
        opts.rendered, encoding="utf-8")
    with stream:
        docs = [d for d in yaml.safe_load_all(stream) if d]
    if not docs:
        print("check_rendered: the rendering is empty")
        return 1
    if opts.self_test:
        return self_test(docs, opts)
    errors = Checker(docs, opts).run()
    if errors:
        print(f"check_rendered: {len(errors)} problem(s) in {opts.rendered}:")
        for e in errors:
            print(f"  - {e}")
        return 1
    kinds = sorted(d["kind"] for d in docs)
    print(f"check_rendered: {opts.rendered}: {len(docs)} objects "
          f"({', '.join(kinds)}) pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
