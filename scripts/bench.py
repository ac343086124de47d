#!/usr/bin/env python3
"""End-to-end benchmark through a real Kafka broker: attnwatch against the Python peer.

Run by scripts/bench, which starts the broker, builds attnwatch and provides the venv.
Every server is on 127.0.0.1; everything it starts is stopped on exit.

1. Throughput. `attnwatch loadgen` fills an input topic (SERIES x POINTS, PARTITIONS).
   attnwatch starts (its own consumer group), and the bench reads its CPU time
   (/proc/<pid>/stat, all threads) once /readyz answers and again once the topic is
   drained; scored points per second and per CPU-second follow, with the CPU share of
   each thread group and of each stage (attnwatch_stage_busy_seconds_total). The Python
   peer (bench/python-peer/peer.py) then reads the same topic with the same model and
   stride in its own group; its summary gives its scored points per CPU-second. The
   ratio is printed.
2. Latency. attnwatch runs on a fresh topic while loadgen offers half the measured
   maximum rate for LATENCY_SECONDS; p50 and p99 from the input message's Kafka
   timestamp to the output's delivery come from attnwatch_end_to_end_latency_seconds.
3. Memory. `cargo bench --bench state_memory` (run by scripts/bench) measures RSS per
   warm series (full context and full calibration) in-process.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")
PERF_ARGS = os.environ.get("BENCH_PERF_ARGS", "").split()


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu(pid):
    """CPU seconds per thread name of a process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1: text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


def group_of(thread):
    if thread.startswith("attnwatch-infer"):
        return "inference threads (model + score)"
    if thread.startswith("rdk:") or thread.startswith("producer"):
        return "librdkafka threads (with delivery reports)"
    if thread.startswith("tokio-r") or thread == "attnwatch":
        return "tokio (ingest, publish)"
    return "other"


def metrics(http):
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def metric(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def ready(http):
    try:
        with urllib.request.urlopen(f"http://{http}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def histogram_quantile(m, name, q):
    """Quantile from a Prometheus histogram's cumulative buckets (linear inside a bucket)."""
    buckets = []
    for k, v in m.items():
        if k.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', k).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return buckets[-1][0]


class Service:
    """attnwatch run, configured by environment overrides for one topic and group."""

    def __init__(self, binary, bootstrap, run, http, stride, perf=None, fmt="attnwatch"):
        self.http = http
        env = dict(os.environ)
        env.update({
            "ATTNWATCH__KAFKA__BROKERS": bootstrap,
            "ATTNWATCH__KAFKA__INPUT_TOPIC": f"{run}-input",
            "ATTNWATCH__KAFKA__OUTPUT_TOPIC": f"{run}-scores",
            "ATTNWATCH__KAFKA__DEAD_LETTER_TOPIC": f"{run}-dead-letter",
            "ATTNWATCH__KAFKA__GROUP_ID": f"{run}-attnwatch",
            "ATTNWATCH__SERVER__LISTEN": http,
            "ATTNWATCH__MODEL__STRIDE": str(stride),
            "ATTNWATCH__INGEST__FORMAT": fmt,
            "RUST_LOG": "warn",
        })
        self.log = tempfile.NamedTemporaryFile(prefix="attnwatch-bench-", suffix=".log", delete=False)
        config = os.path.join(ROOT, "config", "attnwatch.example.toml")
        cmd = [binary, "run", "--config", config]
        self.perf = None
        if perf:
            # perf record of the service's process (all threads), flat profile
            # at 999 Hz; the bench reads the attnwatch pid from perf's child.
            self.perf = subprocess.Popen(["perf", "record", "-F", "999"] + PERF_ARGS + ["-o", perf, "--"] + cmd, env=env,
                                         stdout=self.log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            pid = None
            while pid is None and time.monotonic() < deadline:
                out = subprocess.run(["pgrep", "-P", str(self.perf.pid)], capture_output=True, text=True).stdout.split()
                pid = int(out[0]) if out else None
                time.sleep(0.01)
            self.proc = psutil_like(pid)
        else:
            self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not ready(http):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"attnwatch did not become ready; log: {self.log.name}")
            time.sleep(0.01)
        self.cpu0 = cpu_seconds(self.proc.pid)
        self.threads0 = thread_cpu(self.proc.pid)
        self.t0 = time.monotonic()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.perf is not None:
            self.perf.wait(60)


class psutil_like:
    """Just enough of Popen for a process the bench did not start itself."""

    def __init__(self, pid):
        if pid is None:
            sys.exit("perf did not start attnwatch")
        self.pid = pid

    def poll(self):
        return None if os.path.exists(f"/proc/{self.pid}") else 0

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("attnwatch", timeout)
            time.sleep(0.05)

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)


def loadgen(binary, bootstrap, topic, a, rate=None, points=None, series=None):
    cmd = [binary, "loadgen", "--brokers", bootstrap, "--topic", topic,
           "--series", str(series or a.series), "--points", str(points or a.points),
           "--partitions", str(a.partitions), "--per-message", str(a.per_message),
           "--anomaly-rate", str(a.anomaly_rate), "--bad-rate", str(a.bad_rate), "--interval", "1m",
           "--format", a.format]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    line = out.stdout.strip().splitlines()[-1]
    log(line)
    return int(re.search(r"produced (\d+) messages", line).group(1))


def create_topics(binary, bootstrap, run, partitions):
    env = dict(os.environ, ATTNWATCH__KAFKA__BROKERS=bootstrap, ATTNWATCH__KAFKA__INPUT_TOPIC=f"{run}-input",
               ATTNWATCH__KAFKA__OUTPUT_TOPIC=f"{run}-scores", ATTNWATCH__KAFKA__DEAD_LETTER_TOPIC=f"{run}-dead-letter")
    subprocess.run([binary, "create-topics", "--config", os.path.join(ROOT, "config", "attnwatch.example.toml"),
                    "--partitions", str(partitions)], env=env, check=True, capture_output=True)


def drain(svc, messages, timeout):
    """Wait until every message is consumed and the outputs stop moving."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, None
    while time.monotonic() < deadline:
        m = metrics(svc.http)
        consumed = metric(m, "attnwatch_records_consumed_total")
        out = metric(m, "attnwatch_records_published_total") + metric(m, "attnwatch_records_dead_lettered_total")
        if consumed >= messages:
            if out == last:
                if time.monotonic() - stable_since >= 0.3:
                    return m, stable_since
            else:
                last, stable_since = out, time.monotonic()
        time.sleep(0.02)
    sys.exit(f"attnwatch did not drain {messages} messages in {timeout} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "attnwatch"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "attnwatch-encoder.onnx"))
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--points", type=int, default=2500)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--per-message", type=int, default=1)
    ap.add_argument("--anomaly-rate", type=float, default=0.001)
    ap.add_argument("--bad-rate", type=float, default=0.0)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--http", default="127.0.0.1:19898")
    ap.add_argument("--python", default=sys.executable, help="interpreter with confluent-kafka, onnxruntime, numpy")
    ap.add_argument("--format", default="attnwatch", choices=["attnwatch", "influx", "telegraf_json", "prometheus_json"],
                    help="input format written by loadgen and read by attnwatch (ingest.format); "
                         "the Python peer reads only attnwatch's JSON and is skipped for the others")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--perf", metavar="FILE", help="record a perf profile of attnwatch's throughput run into FILE")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.format != "attnwatch" and not a.skip_peer:
        log(f"--format {a.format}: the Python peer reads only attnwatch's JSON; skipping it")
        a.skip_peer = True

    run = f"bench-{int(time.time())}-{os.getpid()}"
    res = {"series": a.series, "points": a.points, "partitions": a.partitions, "per_message": a.per_message,
           "stride": a.stride, "format": a.format}
    log(f"1/3 throughput: {a.series} series x {a.points} points, {a.partitions} partitions, "
        f"{a.per_message} per message, stride {a.stride}, format {a.format}")
    messages = loadgen(a.binary, a.bootstrap, f"{run}-input", a)
    svc = Service(a.binary, a.bootstrap, run, a.http, a.stride, perf=a.perf, fmt=a.format)
    try:
        m, t_end = drain(svc, messages, timeout=1800)
        cpu = cpu_seconds(svc.proc.pid) - svc.cpu0
        threads1 = thread_cpu(svc.proc.pid)
    finally:
        svc.stop()
    wall = t_end - svc.t0
    scored = metric(m, "attnwatch_records_published_total")
    res["attnwatch"] = {"scored": scored, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                        "scored_per_s": round(scored / wall, 1), "scored_per_cpu_s": round(scored / cpu, 1),
                        "model_runs": metric(m, "attnwatch_model_runs_total")}
    groups = {}
    for name, c in threads1.items():
        g = group_of(name)
        groups[g] = groups.get(g, 0.0) + c - svc.threads0.get(name, 0.0)
    res["attnwatch"]["cpu_by_thread_group"] = {g: round(c / cpu, 3) for g, c in sorted(groups.items())}
    # Busy time is wall time on each stage's thread: on a machine with fewer
    # cores than runnable threads it includes waiting for a core, so it is
    # reported per scored point, not as a share of CPU.
    stages = {k.split('stage="')[1].rstrip('"}'): v for k, v in m.items()
              if k.startswith("attnwatch_stage_busy_seconds_total{")}
    res["attnwatch"]["busy_us_per_point_by_stage"] = {
        s: round(1e6 * v / scored, 2) for s, v in sorted(stages.items())}
    res["attnwatch"]["cpu_us_per_point"] = round(1e6 * cpu / scored, 2)
    log(f"attnwatch: {scored:.0f} scored in {wall:.2f} s wall, {cpu:.2f} CPU s: "
        f"{scored / wall:,.0f} points/s, {scored / cpu:,.0f} points per CPU-s")

    if not a.skip_peer:
        summary = os.path.join(tempfile.gettempdir(), f"{run}-peer.json")
        cmd = [a.python, os.path.join(ROOT, "bench", "python-peer", "peer.py"), "--bootstrap", a.bootstrap,
               "--model", a.model, "--stride", str(a.stride), "--input-topic", f"{run}-input",
               "--output-topic", f"{run}-peer-scores", "--dlq-topic", f"{run}-peer-dlq", "--group", f"{run}-peer",
               "--max-messages", str(messages), "--idle-exit", "10", "--summary-json", summary]
        log("python peer: " + " ".join(cmd[1:]))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(summary) as f:
            peer = json.load(f)
        res["python_peer"] = {k: peer[k] for k in ("scored", "wall_s", "cpu_s", "scored_per_s", "model_runs")}
        res["python_peer"]["scored_per_cpu_s"] = round(peer["scored"] / peer["cpu_s"], 1)
        res["ratio_per_cpu_s"] = round(res["attnwatch"]["scored_per_cpu_s"] / res["python_peer"]["scored_per_cpu_s"], 2)
        log(f"python peer: {peer['scored']} scored in {peer['wall_s']} s wall, {peer['cpu_s']} CPU s: "
            f"{res['python_peer']['scored_per_cpu_s']:,.0f} points per CPU-s; "
            f"ratio attnwatch / peer per CPU-s: {res['ratio_per_cpu_s']}")

    if a.skip_latency:
        print(json.dumps(res, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=2)
        return
    offered = round(0.5 * res["attnwatch"]["scored_per_s"])
    log(f"2/3 latency at half the measured maximum: {offered} points/s for {a.latency_seconds} s")
    lat = f"{run}-lat"
    create_topics(a.binary, a.bootstrap, lat, a.partitions)
    svc = Service(a.binary, a.bootstrap, lat, a.http, a.stride, fmt=a.format)
    try:
        per_series = max(a.stride + 64, int(offered * a.latency_seconds / a.series))
        n = loadgen(a.binary, a.bootstrap, f"{lat}-input", a, rate=offered, points=per_series)
        m, _ = drain(svc, n, timeout=600)
    finally:
        svc.stop()
    res["latency"] = {"offered_points_per_s": offered,
                      "p50_ms": round(1000 * histogram_quantile(m, "attnwatch_end_to_end_latency_seconds", 0.5), 2),
                      "p99_ms": round(1000 * histogram_quantile(m, "attnwatch_end_to_end_latency_seconds", 0.99), 2),
                      "outputs": metric(m, "attnwatch_end_to_end_latency_seconds_count")}
    log(f"latency: p50 {res['latency']['p50_ms']} ms, p99 {res['latency']['p99_ms']} ms "
        f"({res['latency']['outputs']:.0f} outputs at {offered} points/s offered)")
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
