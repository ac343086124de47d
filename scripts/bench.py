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
# The settings both services get (attnwatch by environment, the peers by flag).
THREADS = 1  # ONNX Runtime intra-op threads, one session
MAX_BATCH = 64  # contexts per inference call
TOP_K = 5  # attended time ranges per output
POLL_BATCH = 1024  # the peers' messages per consume() call


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

    def __init__(self, binary, bootstrap, run, http, stride, perf=None, fmt="attnwatch", input_topic=None):
        self.http = http
        env = dict(os.environ)
        env.update({
            "ATTNWATCH__KAFKA__BROKERS": bootstrap,
            "ATTNWATCH__KAFKA__INPUT_TOPIC": input_topic or f"{run}-input",
            "ATTNWATCH__KAFKA__OUTPUT_TOPIC": f"{run}-scores",
            "ATTNWATCH__KAFKA__DEAD_LETTER_TOPIC": f"{run}-dead-letter",
            "ATTNWATCH__KAFKA__GROUP_ID": f"{run}-attnwatch",
            "ATTNWATCH__SERVER__LISTEN": http,
            "ATTNWATCH__MODEL__STRIDE": str(stride),
            # every setting the peers also get, passed explicitly on both sides
            "ATTNWATCH__MODEL__SESSIONS": "1",
            "ATTNWATCH__MODEL__INTRA_THREADS": str(THREADS),
            "ATTNWATCH__MODEL__MAX_BATCH": str(MAX_BATCH),
            "ATTNWATCH__PUBLISH__ATTENTION": "top_k",
            "ATTNWATCH__PUBLISH__TOP_K": str(TOP_K),
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


def sample_bytes(bootstrap, topic, spots=20, each=50):
    """Mean payload bytes of an output topic, from `each` messages at `spots` places spread
    evenly over each partition (a series' early outputs are shorter: fewer attended ranges)."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-sizer", "enable.auto.commit": False})
    sizes = []
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for k in range(spots):
                start = lo + (hi - lo) * k // spots
                c.assign([TopicPartition(topic, p, start)])
                got, deadline = 0, time.monotonic() + 10
                while got < each and time.monotonic() < deadline:
                    for m in c.consume(num_messages=each - got, timeout=1.0):
                        if m.error() is None and m.value() is not None:
                            sizes.append(len(m.value()))
                            got += 1
    finally:
        c.close()
    return round(sum(sizes) / len(sizes), 1) if sizes else None


def run_attnwatch(a, run, messages, input_topic, perf=None):
    svc = Service(a.binary, a.bootstrap, run, a.http, a.stride, perf=perf, fmt=a.format, input_topic=input_topic)
    try:
        m, t_end = drain(svc, messages, timeout=1800)
        cpu = cpu_seconds(svc.proc.pid) - svc.cpu0
        threads1 = thread_cpu(svc.proc.pid)
    finally:
        svc.stop()
    wall = t_end - svc.t0
    scored = metric(m, "attnwatch_records_published_total")
    r = {"scored": scored, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
         "scored_per_s": round(scored / wall, 1), "scored_per_cpu_s": round(scored / cpu, 1),
         "cpu_us_per_point": round(1e6 * cpu / scored, 2), "model_runs": metric(m, "attnwatch_model_runs_total")}
    groups = {}
    for name, c in threads1.items():
        g = group_of(name)
        groups[g] = groups.get(g, 0.0) + c - svc.threads0.get(name, 0.0)
    r["cpu_by_thread_group"] = {g: round(c / cpu, 3) for g, c in sorted(groups.items())}
    # Busy time is wall time on each stage's thread: on a machine with fewer
    # cores than runnable threads it includes waiting for a core, so it is
    # reported per scored point, not as a share of CPU.
    stages = {k.split('stage="')[1].rstrip('"}'): v for k, v in m.items()
              if k.startswith("attnwatch_stage_busy_seconds_total{")}
    r["busy_us_per_point_by_stage"] = {st: round(1e6 * v / scored, 2) for st, v in sorted(stages.items())}
    r["bytes_per_point"] = sample_bytes(a.bootstrap, f"{run}-scores")
    return r


def run_peer(a, run, messages, input_topic, script):
    name = os.path.splitext(script)[0]
    summary = os.path.join(tempfile.gettempdir(), f"{run}-{name}.json")
    cmd = [a.python, os.path.join(ROOT, "bench", "python-peer", script), "--bootstrap", a.bootstrap,
           "--model", a.model, "--stride", str(a.stride), "--threads", str(THREADS),
           "--max-infer-batch", str(MAX_BATCH), "--topk", str(TOP_K), "--batch", str(POLL_BATCH),
           "--input-topic", input_topic, "--output-topic", f"{run}-{name}-scores",
           "--dlq-topic", f"{run}-{name}-dlq", "--group", f"{run}-{name}",
           "--max-messages", str(messages), "--idle-exit", "10", "--summary-json", summary]
    log(f"{name}: " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(summary) as f:
        peer = json.load(f)
    os.unlink(summary)
    r = {k: peer[k] for k in ("scored", "wall_s", "cpu_s", "scored_per_s", "model_runs", "inference_calls",
                              "bytes_per_point")}
    r["scored_per_cpu_s"] = round(peer["scored"] / peer["cpu_s"], 1)
    r["cpu_us_per_point"] = round(1e6 * peer["cpu_s"] / peer["scored"], 2)
    return r


def run_floor(a, run, messages, input_topic):
    env = dict(os.environ, ATTNWATCH__KAFKA__BROKERS=a.bootstrap, ATTNWATCH__KAFKA__INPUT_TOPIC=input_topic,
               ATTNWATCH__KAFKA__OUTPUT_TOPIC=f"{run}-floor-scores",
               ATTNWATCH__KAFKA__DEAD_LETTER_TOPIC=f"{run}-floor-dlq", ATTNWATCH__KAFKA__GROUP_ID=f"{run}-floor",
               ATTNWATCH__INGEST__FORMAT=a.format, ATTNWATCH__PUBLISH__ATTENTION="top_k",
               ATTNWATCH__PUBLISH__TOP_K=str(TOP_K), RUST_LOG="warn")
    cmd = [a.binary, "floor", "--config", os.path.join(ROOT, "config", "attnwatch.example.toml"),
           "--max-messages", str(messages)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    f = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: f[k] for k in ("scored", "wall_s", "cpu_s", "scored_per_cpu_s", "cpu_us_per_point",
                              "bytes_per_point")}


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else round((xs[n // 2 - 1] + xs[n // 2]) / 2, 2)


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
    ap.add_argument("--repeat", type=int, default=1,
                    help="drain the topic this many times with every service, alternating which drains first; "
                         "medians and per-round ratios are reported")
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--http", default="127.0.0.1:19898")
    ap.add_argument("--python", default=sys.executable, help="interpreter with confluent-kafka, orjson, onnxruntime, numpy")
    ap.add_argument("--format", default="attnwatch", choices=["attnwatch", "influx", "telegraf_json", "prometheus_json"],
                    help="input format written by loadgen and read by attnwatch (ingest.format); "
                         "the Python peers read only attnwatch's JSON and are skipped for the others")
    ap.add_argument("--skip-peer", action="store_true", help="skip both Python peers")
    ap.add_argument("--skip-floor", action="store_true", help="skip the Rust pass-through floor")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--perf", metavar="FILE", help="record a perf profile of attnwatch's throughput run into FILE")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.format != "attnwatch" and not a.skip_peer:
        log(f"--format {a.format}: the Python peers read only attnwatch's JSON; skipping them")
        a.skip_peer = True

    run = f"bench-{int(time.time())}-{os.getpid()}"
    res = {"series": a.series, "points": a.points, "partitions": a.partitions, "per_message": a.per_message,
           "stride": a.stride, "format": a.format, "repeat": a.repeat,
           "settings": {"intra_threads": THREADS, "sessions": 1, "max_batch": MAX_BATCH, "top_k": TOP_K,
                        "peer_poll_batch": POLL_BATCH}}
    log(f"1/3 throughput: {a.series} series x {a.points} points, {a.partitions} partitions, "
        f"{a.per_message} per message, stride {a.stride}, format {a.format}, {a.repeat} round(s)")
    messages = loadgen(a.binary, a.bootstrap, f"{run}-input", a)
    services = ["attnwatch"] + ([] if a.skip_peer else ["python_peer", "tuned_peer"]) + ([] if a.skip_floor else ["floor"])
    rounds = []
    for i in range(a.repeat):
        order = services if i % 2 == 0 else services[::-1]
        log(f"round {i + 1}/{a.repeat}: " + ", then ".join(order))
        rnd = {}
        for svc in order:
            tag, topic = f"{run}-r{i}", f"{run}-input"
            if svc == "attnwatch":
                rnd[svc] = run_attnwatch(a, tag, messages, topic, perf=a.perf if i == 0 else None)
            elif svc == "python_peer":
                rnd[svc] = run_peer(a, tag, messages, topic, "peer.py")
            elif svc == "tuned_peer":
                rnd[svc] = run_peer(a, tag, messages, topic, "tuned.py")
            else:
                rnd[svc] = run_floor(a, tag, messages, topic)
            r = rnd[svc]
            log(f"  {svc}: {r['scored']:.0f} scored, {r['cpu_s']} CPU s: {r['scored_per_cpu_s']:,.0f} per CPU-s "
                f"({r['cpu_us_per_point']} us per point), {r['bytes_per_point']} bytes per point")
        rounds.append(rnd)
    res["rounds"] = rounds
    summary = {}
    for svc in services:
        summary[svc] = {k: median([r[svc][k] for r in rounds])
                        for k in ("scored_per_cpu_s", "cpu_us_per_point", "bytes_per_point")}
    ratios = {}
    for other in services[1:]:
        key = "attnwatch_cpu_per_point_over_floor" if other == "floor" else f"attnwatch_over_{other}_per_cpu_s"
        if other == "floor":
            ratios[key] = median([round(r["attnwatch"]["cpu_us_per_point"] / r["floor"]["cpu_us_per_point"], 2)
                                  for r in rounds])
        else:
            ratios[key] = median([round(r["attnwatch"]["scored_per_cpu_s"] / r[other]["scored_per_cpu_s"], 2)
                                  for r in rounds])
    res["median"] = summary
    res["ratios"] = ratios
    res["attnwatch"] = rounds[0]["attnwatch"]
    for svc in services:
        m = summary[svc]
        log(f"median {svc}: {m['scored_per_cpu_s']:,.0f} scored per CPU-s, {m['cpu_us_per_point']} us per point, "
            f"{m['bytes_per_point']} bytes per point")
    for k, v in ratios.items():
        log(f"median ratio {k}: {v}")

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
