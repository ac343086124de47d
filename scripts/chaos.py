#!/usr/bin/env python3
"""Delivery under faults, on the real broker: what each fault loses or repeats.

Run by scripts/chaos, which starts the broker (scripts/kafka), builds attnwatch and
provides the venv. Every server listens on 127.0.0.1; everything started is stopped.

For each input (clean, and 1 record in 50 malformed) a reference run scores the
input without faults. Then, for each scenario and delivery mode, a fresh set of
topics is fed the same input at a steady rate (`attnwatch loadgen`, same seed and
timestamps), attnwatch scores it, and the fault strikes a few seconds in:

  sigkill       attnwatch SIGKILLed, restarted 1 s later (same transactional id)
  sigterm       attnwatch SIGTERMed (graceful drain), restarted
  broker_kill   the broker SIGKILLed and restarted on its data (scripts/kafka restart --kill)
  rebalance     a second instance joins; once it owns partitions the first is SIGKILLed
                and not restarted, so its partitions move and their state is rebuilt
  broker_pause  the broker SIGSTOPped for 15 s, then SIGCONT
  malformed     no fault; 1 record in 50 malformed in each way the decoder knows
  timers        short idle timers (flush 2 s, stale 5 s) on a 1 s grid; the input pauses
                halfway for 9 s, and attnwatch is SIGKILLed 8 s into the pause, after the
                timers fired and their outputs were committed, then restarted
  scale_out     short timers; a second instance joins and both keep running to the end
  scale_in      short timers; two instances from the start, the second SIGTERMed

In the timer scenarios flushed points are counted with the scored points (they are
points), and stale events on their own: lost, duplicated and extra, against the
reference run of the same input with the same timers.

--soak DURATION runs one long row instead: the input at half the measured maximum
load (a short unpaced burst measures it first), a second instance joining and leaving
(SIGTERM) every 10 minutes, RSS, consumer lag and the end-to-end p99 sampled every
10 s, their slopes, and lost and duplicated points at the end.

The output topic (created with LogAppendTime) is read from the start with
isolation.level=read_committed. Per row: good points in, output records, distinct
(series, ts), duplicates, lost (in the reference, not here), extra (here, not in the
reference), dead letters, how many scores differ from the reference (|d| > 1e-6) and
the largest difference, how often the harness restarted a service that stopped on its
own (a failed exactly-once transaction stops it; the harness acts as the supervisor),
and the time to recover, twice: the longest any one series went without a new output
from the fault on, by the records' append times ("written": when the service wrote them)
and by when the read_committed reader received them ("seen": what a downstream consumer
experiences; a dead instance's open transaction holds back its partitions' later records
until the broker aborts it). At 400 points/s over 20 series a series normally gets a point
every 50 ms; in exactly_once mode outputs are seen at each commit (every second). Exit status 1 when a row loses points, or when an
exactly_once row has duplicates (with --strict, also score differences).
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ["sigkill", "sigterm", "broker_kill", "rebalance", "broker_pause", "malformed",
             "timers", "scale_out", "scale_in"]
# Scenarios on a 1-second grid with short idle timers (flush 2 s, stale 5 s), so
# that flushed buckets and stale events happen within the run.
TIMER_SCENARIOS = {"timers", "scale_out", "scale_in"}
FLUSH_S, STALE_S = 2, 5
MODES = ["at_least_once", "exactly_once"]
START_MS = 1_700_000_000_000
# A series' values before this one are its warm-up (the model's min_points).
MIN_POINTS = 32


def log(*a):
    print("[chaos]", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return None, ""


def metric(addr, name):
    _, text = http_get(addr, "/metrics")
    total = None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


class Instance:
    """One attnwatch process with its own config file and log."""

    def __init__(self, binary, config_text, name, logdir):
        self.binary, self.name = binary, name
        self.http = f"127.0.0.1:{free_port()}"
        self.config = os.path.join(logdir, f"{name}.toml")
        with open(self.config, "w") as f:
            f.write(config_text.replace("@HTTP@", self.http))
        self.logpath = os.path.join(logdir, f"{name}.log")
        self.proc = None
        self.starts = 0
        self.wanted = False  # the supervisor restarts a wanted instance that exited

    def start(self):
        self.wanted = True
        self.starts += 1
        logf = open(self.logpath, "a")
        logf.write(f"--- start {self.starts} at {time.time():.3f}\n")
        logf.flush()
        env = dict(os.environ, RUST_LOG=os.environ.get("CHAOS_RUST_LOG", "info"))
        self.proc = subprocess.Popen([self.binary, "run", "--config", self.config], cwd=ROOT, env=env,
                                     stdout=logf, stderr=subprocess.STDOUT)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited (rc {self.proc.returncode}); log: {self.logpath}")
            if http_get(self.http, "/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; log: {self.logpath}")

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def take_down(self, sig):
        """Stop it on purpose (not a failure the supervisor should undo) and wait."""
        self.wanted = False
        self.signal(sig)
        self.proc.wait(90)

    def stop(self, timeout=60):
        self.wanted = False
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def config_text(a, run, mode, txn_id, timers=False):
    window = f'\n[window]\nflush_after = "{FLUSH_S}s"\nstale_after = "{STALE_S}s"\n' if timers else ""
    return window + f"""
[kafka]
brokers = "{a.bootstrap}"
group_id = "{run}-group"
input_topic = "{run}-in"
output_topic = "{run}-out"
dead_letter_topic = "{run}-dlq"
delivery = "{mode}"
transactional_id = "{txn_id}"
commit_interval = "1s"
rebuild_messages = 1000000

[kafka.options]
"session.timeout.ms" = {a.session_timeout_ms}
"heartbeat.interval.ms" = 1000

[model]
path = "{os.path.join(ROOT, 'models', 'attnwatch-encoder.onnx')}"

[server]
listen = "@HTTP@"

[shutdown]
grace = "30s"
"""


def create_topics(a, run, retention_ms=None):
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    # A long soak keeps only the last minutes of its topics (the counter reads
    # the output as it comes), so that the broker's disk stays bounded.
    keep = {"retention.ms": str(retention_ms), "segment.ms": str(max(retention_ms // 4, 10_000))} \
        if retention_ms else {}
    topics = [
        NewTopic(f"{run}-in", a.partitions, 1, config=dict(keep)),
        NewTopic(f"{run}-out", a.partitions, 1, config={"message.timestamp.type": "LogAppendTime", **keep}),
        NewTopic(f"{run}-dlq", 1, 1, config={"message.timestamp.type": "LogAppendTime"}),
    ]
    for t, f in admin.create_topics(topics, operation_timeout=30).items():
        f.result()


def loadgen(a, run, bad_rate, paced, start_ms=START_MS, points=None, interval="1m", seed=7, rate=None):
    cmd = [a.binary, "loadgen", "--brokers", a.bootstrap, "--topic", f"{run}-in",
           "--series", str(a.series), "--points", str(points or a.points), "--partitions", str(a.partitions),
           "--start-ms", str(start_ms), "--seed", str(seed), "--bad-rate", str(bad_rate),
           "--interval", interval]
    if paced:
        cmd += ["--rate", str(rate or a.rate)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


class Feed:
    """The input of one row. Timer scenarios are on a 1 s grid; `timers` pauses
    halfway (FLUSH_S and STALE_S pass) and goes on with the second half."""

    def __init__(self, a, run, name, bad_rate, paced):
        self.a, self.run, self.name, self.bad_rate, self.paced = a, run, name, bad_rate, paced
        self.timers = name in TIMER_SCENARIOS
        self.pause_s = STALE_S + 4 if name == "timers" else 0
        self.pause_started = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        a = self.a
        interval = "1s" if self.timers else "1m"
        if not self.pause_s:
            loadgen(a, self.run, self.bad_rate, self.paced, interval=interval).communicate()
            return
        half = a.points // 2
        loadgen(a, self.run, self.bad_rate, self.paced, points=half, interval=interval).communicate()
        self.pause_started = time.monotonic()
        time.sleep(self.pause_s)
        loadgen(a, self.run, self.bad_rate, self.paced, start_ms=START_MS + half * 1000,
                points=a.points - half, interval=interval, seed=8).communicate()

    def wait(self):
        self.thread.join()


def committed_reader(a, group, topic):
    """A consumer of `topic` from its start that sees only committed transactions."""
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    c.subscribe([topic])
    return c


class Output:
    """The output topic read from the start, read_committed, on a thread of its own from
    before the fault on, so that each record's arrival time is when a reader could see it."""

    def __init__(self, a, run):
        self.c = committed_reader(a, f"{run}-reader-{random.getrandbits(32):08x}", f"{run}-out")
        self.records = []  # (series, ts, score, anomaly, append_ms, seen_ms)
        self.stale = []  # (series, ts)
        self.last_new = time.monotonic()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            msgs = self.c.consume(1000, timeout=0.2)
            seen = time.time() * 1000
            with self.lock:
                for m in msgs:
                    if m.error():
                        continue
                    v = json.loads(m.value())
                    if v.get("event") == "stale":
                        self.stale.append((v["series"], v["ts"]))
                        self.last_new = time.monotonic()
                        continue
                    self.records.append((v["series"], v["ts"], v["score"], v["anomaly"], m.timestamp()[1], seen))
                    self.last_new = time.monotonic()

    def distinct(self):
        with self.lock:
            return len({(r[0], r[1]) for r in self.records})

    def quiet_for(self):
        with self.lock:
            return time.monotonic() - self.last_new if self.records else 0.0

    def close(self):
        self.stopping.set()
        self.thread.join(10)
        self.c.close()


def count_topic(a, topic):
    """Committed records in `topic` (read_committed, from the start)."""
    c = committed_reader(a, f"count-{random.getrandbits(32):08x}", topic)
    n, idle = 0, time.monotonic()
    while time.monotonic() - idle < 5:
        msgs = c.consume(1000, timeout=0.5)
        if msgs:
            n += sum(1 for m in msgs if not m.error())
            idle = time.monotonic()
    c.close()
    return n


def collect(out, want, deadline, quiet=5.0):
    """Wait for `want` distinct points and `quiet` seconds without new records, or the deadline."""
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if (want is None or out.distinct() >= want) and out.quiet_for() >= quiet:
            return True
    return False


def reference(a, bad_rate, name=""):
    run = f"chaos-ref-{random.getrandbits(32):08x}"
    create_topics(a, run)
    timers = name in TIMER_SCENARIOS
    inst = Instance(a.binary, config_text(a, run, "at_least_once", f"{run}-a", timers), "reference", a.logdir)
    inst.start()
    inst.wait_ready()
    out = Output(a, run)
    Feed(a, run, name, bad_rate, paced=False).wait()
    collect(out, None, time.monotonic() + 300, quiet=8.0 + (STALE_S if timers else 0))
    inst.stop()
    out.close()
    ref = {}
    for s, ts, score, anomaly, *_ in out.records:
        ref[(s, ts)] = (score, anomaly)
    log(f"reference ({name or 'plain'}, bad rate {bad_rate}): {len(ref)} distinct points scored from "
        f"{a.series * a.points} in, {len(out.stale)} stale events")
    return ref, sorted(out.stale)


class Supervisor:
    """What compose's `restart: unless-stopped` does: restart a wanted instance that exited."""

    def __init__(self, instances):
        self.instances, self.restarts = instances, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.wait(0.2):
            for inst in self.instances:
                if inst.wanted and inst.starts and not inst.alive():
                    log(f"{inst.name} exited (rc {inst.proc.returncode}); restarting it")
                    self.restarts += 1
                    inst.start()

    def close(self):
        self.stopping.set()
        self.thread.join(5)


def broker_pid(a):
    with open(os.path.join(a.kafka_state, "kafka.pid")) as f:
        return int(f.read().strip())


def scenario(a, name, mode, reference_run):
    ref, ref_stale = reference_run
    run = f"chaos-{name.replace('_', '-')}-{mode.replace('_', '-')}-{random.getrandbits(32):08x}"
    create_topics(a, run)
    timers = name in TIMER_SCENARIOS
    first = Instance(a.binary, config_text(a, run, mode, f"{run}-a", timers), f"{run}-a", a.logdir)
    second = Instance(a.binary, config_text(a, run, mode, f"{run}-b", timers), f"{run}-b", a.logdir)
    first.start()
    first.wait_ready()
    if name == "scale_in":
        second.start()
        second.wait_ready()
    out = Output(a, run)
    bad_rate = 0.02 if name == "malformed" else 0.0
    gen = Feed(a, run, name, bad_rate, paced=True)
    t0 = time.monotonic()
    if name == "timers":
        # Strike in the pause, once the timers have fired and committed.
        while gen.pause_started is None and gen.thread.is_alive():
            time.sleep(0.1)
        time.sleep(max(0.0, (gen.pause_started or time.monotonic()) + STALE_S + 3 - time.monotonic()))
    else:
        time.sleep(a.fault_at)
    fault_wall_ms = time.time() * 1000
    supervisor = Supervisor([first, second])
    if name in ("sigkill", "timers"):
        first.take_down(signal.SIGKILL)
        time.sleep(1)
        first.start()
    elif name == "sigterm":
        first.take_down(signal.SIGTERM)
        first.start()
    elif name == "broker_kill":
        subprocess.run([os.path.join(ROOT, "scripts", "kafka"), "restart", "--kill"], check=True,
                       stdout=subprocess.DEVNULL)
    elif name in ("rebalance", "scale_out"):
        second.start()
        second.wait_ready()
        # The second instance has partitions once it is ready.
        deadline = time.monotonic() + 60
        while (metric(second.http, "attnwatch_assigned_partitions") or 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        if name == "rebalance":
            first.take_down(signal.SIGKILL)
    elif name == "scale_in":
        second.take_down(signal.SIGTERM)
    elif name == "broker_pause":
        pid = broker_pid(a)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(15)
        os.kill(pid, signal.SIGCONT)
    gen.wait()
    fed = time.monotonic() - t0
    collect(out, len(ref), time.monotonic() + a.drain_timeout, quiet=5.0 + (STALE_S + 2 if timers else 0))
    supervisor.close()
    restarts = supervisor.restarts
    for inst in (first, second):
        inst.stop()
    time.sleep(2)
    out.close()
    dead = count_topic(a, f"{run}-dlq")

    keys = [(r[0], r[1]) for r in out.records]
    distinct = set(keys)
    lost = set(ref) - distinct
    extra = distinct - set(ref)
    diffs, flag_diffs, max_diff = 0, 0, 0.0
    seen = {}
    for s, ts, score, anomaly, *_ in out.records:
        seen.setdefault((s, ts), (score, anomaly))
    for k, (score, anomaly) in seen.items():
        if k in ref:
            d = abs(score - ref[k][0])
            max_diff = max(max_diff, d)
            diffs += d > 1e-6
            flag_diffs += anomaly != ref[k][1]
    # Time to recover: the longest any one series went without a new output
    # (append time) from just before the fault on. A series is owned by one
    # instance, so this sees a partition that moved even while the other
    # partition's series keep flowing.
    def longest_silence(col):
        by_series = {}
        for r in out.records:
            if r[col] >= fault_wall_ms - 2000:
                by_series.setdefault(r[0], []).append(r[col])
        gaps = []
        for times in by_series.values():
            times.sort()
            gaps += [b - a_ for a_, b in zip(times, times[1:])]
        return max(gaps) / 1000 if gaps else float("nan")

    recover = longest_silence(4)
    recover_seen = longest_silence(5)
    got_stale = {}
    for k in out.stale:
        got_stale[k] = got_stale.get(k, 0) + 1
    want_stale = set(ref_stale)
    row = {
        "stale_want": len(ref_stale), "stale_out": len(out.stale),
        "stale_duplicates": sum(c - 1 for c in got_stale.values()),
        "stale_lost": len(want_stale - set(got_stale)), "stale_extra": len(set(got_stale) - want_stale),
        "scenario": name, "mode": mode, "points_in": a.series * a.points, "records_out": len(keys),
        "distinct_out": len(distinct), "duplicates": len(keys) - len(distinct), "lost": len(lost),
        "extra": len(extra), "dead_letters": dead, "scores_differing": diffs, "max_score_diff": max_diff,
        "flags_differing": flag_diffs, "recover_s": recover, "recover_seen_s": recover_seen, "restarts": restarts, "fed_s": fed,
    }
    log(json.dumps(row))
    return row


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def explosion(a, series, max_series):
    """SERIES series x 2 points through Kafka into one instance with window.max_series = MAX_SERIES."""
    run = f"chaos-explode-{random.getrandbits(32):08x}"
    create_topics(a, run)
    text = config_text(a, run, "at_least_once", f"{run}-a") + f"\n[window]\nmax_series = {max_series}\n"
    inst = Instance(a.binary, text, run, a.logdir)
    inst.start()
    inst.wait_ready()
    base = rss_kib(inst.proc.pid)
    gen = loadgen_explode(a, run, series)
    want = 2 * series
    t0 = time.monotonic()
    peak, last_print = base, 0.0
    deadline = t0 + a.drain_timeout * 5
    consumed = 0
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(inst.proc.pid))
        consumed = metric(inst.http, "attnwatch_records_consumed_total") or 0
        if consumed >= want:
            break
        if time.monotonic() - last_print > 10:
            log(f"explosion: {consumed:,.0f} of {want:,} messages consumed, RSS {peak / 1024:.0f} MiB")
            last_print = time.monotonic()
        time.sleep(0.5)
    gen.wait()
    seconds = time.monotonic() - t0
    hwm = rss_kib(inst.proc.pid, "VmHWM")
    row = {
        "series": series, "max_series": max_series, "messages": want, "consumed": consumed,
        "seconds": seconds, "rss_idle_mib": base / 1024, "rss_peak_mib": max(peak, hwm) / 1024,
        "active_series": metric(inst.http, "attnwatch_active_series"),
        "evicted_lru": metric(inst.http, 'attnwatch_series_evicted_total{reason="lru"}'),
    }
    inst.stop()
    log(json.dumps(row))
    return row


def loadgen_explode(a, run, series):
    cmd = [a.binary, "loadgen", "--brokers", a.bootstrap, "--topic", f"{run}-in", "--series", str(series),
           "--points", "2", "--partitions", str(a.partitions), "--start-ms", str(START_MS), "--seed", "3",
           "--anomaly-rate", "0"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def histogram(addr, name):
    """The cumulative bucket counts of histogram `name` summed over label sets: {le: count}."""
    _, text = http_get(addr, "/metrics")
    out = {}
    for line in text.splitlines():
        if not line.startswith(name + "_bucket{"):
            continue
        labels, value = line.rsplit(" ", 1)
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        le = float("inf") if le == "+Inf" else float(le)
        out[le] = out.get(le, 0.0) + float(value)
    return out


def quantile(delta, q):
    """The q-quantile of a histogram's bucket deltas ({le: cumulative count}), linear in a bucket."""
    items = sorted(delta.items())
    if not items or items[-1][1] <= 0:
        return float("nan")
    want, prev_le, prev_c = q * items[-1][1], 0.0, 0.0
    for le, c in items:
        if c >= want:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((want - prev_c) / max(c - prev_c, 1e-12))
        prev_le, prev_c = le, c
    return prev_le


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def slope_per_hour(samples):
    """Least-squares slope of (seconds, value) samples, per hour."""
    pts = [(t, v) for t, v in samples if v == v]
    if len(pts) < 2:
        return float("nan")
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return float("nan")
    return 3600 * sum((t - mt) * (v - mv) for t, v in pts) / var


def measure_max(a, timers_text):
    """Points per second one instance scores and publishes from a backlog (the unpaced burst)."""
    run = f"chaos-max-{random.getrandbits(32):08x}"
    create_topics(a, run)
    inst = Instance(a.binary, config_text(a, run, "at_least_once", f"{run}-a") + timers_text, run, a.logdir)
    inst.start()
    inst.wait_ready()
    burst = a.soak_burst
    points = max(burst // a.series, 64)
    loadgen(a, run, 0.0, paced=False, points=points, interval="1s").communicate()
    want = a.series * points
    t0, start_count = None, 0
    deadline = time.monotonic() + a.drain_timeout * 3
    want = a.series * (points - MIN_POINTS)
    while time.monotonic() < deadline:
        done = metric(inst.http, "attnwatch_records_published_total") or 0
        if t0 is None and done > 0:
            t0, start_count = time.monotonic(), done
        if done >= want:
            break
        time.sleep(0.2)
    seconds = time.monotonic() - (t0 or time.monotonic())
    inst.stop()
    rate = (done - start_count) / max(seconds, 1e-3)
    log(f"soak: measured maximum {rate:,.0f} points/s ({done:,.0f} of {want:,} published in {seconds:.1f} s)")
    return rate


def soak(a):
    timers_text = '\n[window]\nflush_after = "5s"\nstale_after = "600s"\n'
    rate = a.soak_rate or 0.5 * measure_max(a, timers_text)
    run = f"chaos-soak-{random.getrandbits(32):08x}"
    create_topics(a, run, retention_ms=300_000 if a.soak > 600 else None)
    mode = a.modes.split(",")[0] if a.modes else "at_least_once"
    # A rebuild re-reads the model's window for every series of a partition
    # (the README's rule), not the whole partition as in the scenarios.
    rebuild = 2048 * -(-a.series // a.partitions)

    def text(name):
        return (config_text(a, run, mode, f"{run}-{name}") + timers_text).replace(
            "rebuild_messages = 1000000", f"rebuild_messages = {rebuild}")
    first = Instance(a.binary, text("a"), f"{run}-a", a.logdir)
    second = Instance(a.binary, text("b"), f"{run}-b", a.logdir)
    first.start()
    first.wait_ready()
    points = max(int(rate * a.soak / a.series), 64)
    log(f"soak: {a.soak:.0f} s at {rate:,.0f} points/s ({a.series} series x {points:,} points, 1 s grid), "
        f"{mode}, a second instance joining and leaving every {a.soak_rebalance:.0f} s")
    counter = Counter(a, run)
    gen = loadgen(a, run, 0.0, paced=True, points=points, interval="1s", rate=rate)
    supervisor = Supervisor([first, second])
    t0 = time.monotonic()
    samples, last_hist, next_rebalance, rebalances = [], None, t0 + a.soak_rebalance, 0
    while gen.poll() is None:
        time.sleep(max(0.0, 10 - ((time.monotonic() - t0) % 10)))
        now = time.monotonic() - t0
        live = [i for i in (first, second) if i.alive()]
        rss = sum(rss_kib(i.proc.pid) for i in live) / 1024
        lag = sum(metric(i.http, "attnwatch_consumer_lag") or 0 for i in live)
        hist = {}
        for i in live:
            for le, c in histogram(i.http, "attnwatch_end_to_end_latency_seconds").items():
                hist[le] = hist.get(le, 0.0) + c
        p99 = float("nan")
        if last_hist is not None:
            delta = {le: c - last_hist.get(le, 0.0) for le, c in hist.items()}
            p99 = quantile(delta, 0.99) * 1000
        last_hist = hist
        samples.append({"t": now, "rss_mib": rss, "rss_first_mib": rss_kib(first.proc.pid) / 1024 if first.alive() else float("nan"),
                        "lag": lag, "p99_ms": p99, "instances": len(live)})
        log(f"soak {now:6.0f} s: RSS {rss:7.1f} MiB (first {samples[-1]['rss_first_mib']:.1f}), lag {lag:8,.0f}, "
            f"p99 {p99:7.1f} ms, instances {len(live)}")
        if time.monotonic() >= next_rebalance:
            if second.wanted:
                second.take_down(signal.SIGTERM)
            else:
                second.start()
            rebalances += 1
            next_rebalance += a.soak_rebalance
            last_hist = None  # the instance set changed
    fed = time.monotonic() - t0
    want = a.series * (points - MIN_POINTS)
    counts = counter.finish(want, time.monotonic() + a.drain_timeout * 4)
    supervisor.close()
    for inst in (first, second):
        inst.stop()
    distinct = sum(1 for c in counts.values() for x in c if x)
    dups = sum(x - 1 for c in counts.values() for x in c if x > 1)
    # Slopes over the steady state: after the warm-up (every series' context
    # filling, the first model runs), the first rebalance period or a quarter
    # of the run, whichever is shorter.
    steady = [x for x in samples if x["t"] >= min(a.soak_rebalance, fed / 4)]
    row = {
        "seconds": fed, "rate": rate, "mode": mode, "series": a.series, "points_in": a.series * points,
        "expected": want, "distinct_out": distinct, "lost": want - distinct, "duplicates": dups,
        "rebalances": rebalances,
        "rss_first_slope_mib_per_h": slope_per_hour([(x["t"], x["rss_first_mib"]) for x in steady]),
        "rss_first_mib_start": steady[0]["rss_first_mib"] if steady else float("nan"),
        "rss_first_mib_end": steady[-1]["rss_first_mib"] if steady else float("nan"),
        "lag_slope_per_h": slope_per_hour([(x["t"], x["lag"]) for x in steady]),
        "lag_max": max((x["lag"] for x in steady), default=float("nan")),
        "p99_slope_ms_per_h": slope_per_hour([(x["t"], x["p99_ms"]) for x in steady]),
        "p99_median_ms": median([x["p99_ms"] for x in steady if x["p99_ms"] == x["p99_ms"]]),
        "samples": samples,
    }
    return row


class Counter:
    """The output topic counted as it comes, per (series, ts): {series: bytearray of
    copies per grid index}. Started before the feed, so that a soak can keep only the
    last minutes of its topics."""

    def __init__(self, a, run):
        self.c = committed_reader(a, f"{run}-count-{random.getrandbits(32):08x}", f"{run}-out")
        self.counts, self.n, self.last_new = {}, 0, time.monotonic()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            msgs = self.c.consume(5000, timeout=0.5)
            for m in msgs:
                if m.error():
                    continue
                v = m.value()
                if b'"event"' in v:
                    continue
                i = v.find(b'"ts":') + 5
                j = i
                while v[j:j + 1].isdigit():
                    j += 1
                idx = (int(v[i:j]) - START_MS) // 1000
                series = m.key()
                arr = self.counts.get(series)
                if arr is None or len(arr) <= idx:
                    grown = bytearray(max(idx + 1, 2 * len(arr or b"")))
                    if arr is not None:
                        grown[:len(arr)] = arr
                    self.counts[series] = arr = grown
                if arr[idx] < 255:
                    arr[idx] += 1
                self.n += 1
            if msgs:
                self.last_new = time.monotonic()

    def finish(self, want, deadline):
        """Wait until `want` outputs and 15 s without a new one, or the deadline."""
        while time.monotonic() < deadline and (self.n < want or time.monotonic() - self.last_new < 15):
            time.sleep(0.5)
        self.stopping.set()
        self.thread.join(10)
        self.c.close()
        return self.counts

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "attnwatch"))
    p.add_argument("--kafka-state", default=os.environ.get("KAFKA_STATE", ""))
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--series", type=int, default=20)
    p.add_argument("--points", type=int, default=600)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--rate", type=float, default=400.0, help="offered points per second")
    p.add_argument("--fault-at", type=float, default=8.0, help="seconds into the stream")
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--session-timeout-ms", type=int, default=6000,
                   help="consumer session timeout: short, so that a killed member's partitions move soon "
                        "(librdkafka's default is 45000)")
    p.add_argument("--strict", action="store_true", help="also fail on scores that differ from the reference")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--soak", type=float, metavar="SECONDS",
                   help="instead of the scenarios: a soak this long at half the measured maximum load")
    p.add_argument("--soak-rate", type=float, help="soak load in points/s (default: half the measured maximum)")
    p.add_argument("--soak-burst", type=int, default=200_000, help="points of the unpaced burst that measures the maximum")
    p.add_argument("--soak-rebalance", type=float, default=600.0, help="seconds between rebalances in the soak")
    p.add_argument("--explosion", type=int, metavar="SERIES",
                   help="instead of the scenarios: SERIES series x 2 points through Kafka, once with "
                        "window.max_series above SERIES and once at a tenth of it; peak RSS and evictions")
    a = p.parse_args()
    a.logdir = tempfile.mkdtemp(prefix="attnwatch-chaos-")
    log(f"logs in {a.logdir}")
    if a.soak:
        r = soak(a)
        print(f"\n| soak | mode | load (points/s) | series | points in | expected out | distinct out | lost | duplicates "
              f"| rebalances | RSS of the first instance: start / end (MiB), slope | consumer lag: max, slope "
              f"| end-to-end p99: median, slope |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {r['seconds'] / 60:.0f} min | {r['mode']} | {r['rate']:,.0f} | {r['series']} | {r['points_in']:,} "
              f"| {r['expected']:,} | {r['distinct_out']:,} | {r['lost']:,} | {r['duplicates']:,} | {r['rebalances']} "
              f"| {r['rss_first_mib_start']:.0f} / {r['rss_first_mib_end']:.0f}, {r['rss_first_slope_mib_per_h']:+.1f} MiB/h "
              f"| {r['lag_max']:,.0f}, {r['lag_slope_per_h']:+,.0f} /h "
              f"| {r['p99_median_ms']:.0f} ms, {r['p99_slope_ms_per_h']:+.1f} ms/h |")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(r, f, indent=1)
        sys.exit(1 if r["lost"] > 0 else 0)
    if a.explosion:
        rows = [explosion(a, a.explosion, a.explosion), explosion(a, a.explosion, max(a.explosion // 10, 1))]
        print(f"\n| series x points | window.max_series | messages consumed | seconds | RSS ready (MiB) "
              f"| peak RSS (MiB) | series held at the end | evicted (lru) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['series']:,} x 2 | {r['max_series']:,} | {r['consumed']:,.0f} | {r['seconds']:.0f} "
                  f"| {r['rss_idle_mib']:.0f} | {r['rss_peak_mib']:.0f} | {r['active_series']:,.0f} "
                  f"| {r['evicted_lru']:,.0f} |")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(rows, f, indent=1)
        sys.exit(0 if all(r["consumed"] >= r["messages"] for r in rows) else 1)
    scenarios = [s for s in a.scenarios.split(",") if s]
    modes = [m for m in a.modes.split(",") if m]
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s}; known: {', '.join(SCENARIOS)}")
    for m in modes:
        if m not in MODES:
            sys.exit(f"unknown mode {m}; known: {', '.join(MODES)}")
    refs = {}
    rows = []
    for name in scenarios:
        bad = 0.02 if name == "malformed" else 0.0
        # The timers scenario's input pauses; the other timer scenarios share one input.
        kind = (bad, name if name == "timers" else ("timer" if name in TIMER_SCENARIOS else ""))
        if kind not in refs:
            refs[kind] = reference(a, bad, name)
        for mode in modes:
            log(f"scenario {name}, {mode}")
            rows.append(scenario(a, name, mode, refs[kind]))
    print(f"\n{a.series} series x {a.points} points, {a.partitions} partitions, {a.rate:.0f} points/s offered, "
          f"fault {a.fault_at:.0f} s in; output read with isolation.level=read_committed\n")
    print("| scenario | delivery | points in | records out | distinct out | duplicates | lost | extra "
          "| stale events (of ref.) | stale dup / lost / extra "
          "| dead letters | scores ≠ reference (max Δ) | restarts | time to recover: written | time to recover: seen |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['mode']} | {r['points_in']:,} | {r['records_out']:,} | {r['distinct_out']:,} "
              f"| {r['duplicates']:,} | {r['lost']:,} | {r['extra']:,} "
              f"| {r['stale_out']} ({r['stale_want']}) | {r['stale_duplicates']} / {r['stale_lost']} / {r['stale_extra']} "
              f"| {r['dead_letters']:,} "
              f"| {r['scores_differing']:,} ({r['max_score_diff']:.2g}) | {r['restarts']} | {r['recover_s']:.1f} s "
              f"| {r['recover_seen_s']:.1f} s |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    failed = [r for r in rows if r["lost"] or r["extra"] or r["stale_lost"] or r["stale_extra"]
              or (r["mode"] == "exactly_once" and (r["duplicates"] or r["stale_duplicates"]))
              or (a.strict and r["scores_differing"])]
    for r in failed:
        log(f"FAILED: {r['scenario']} {r['mode']}: lost {r['lost']}, extra {r['extra']}, "
            f"duplicates {r['duplicates']}, stale dup/lost/extra {r['stale_duplicates']}/{r['stale_lost']}/"
            f"{r['stale_extra']}, scores differing {r['scores_differing']}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    try:
        main()
    except KafkaException as e:
        sys.exit(f"kafka: {e}")
