#!/usr/bin/env python3
"""Python peer: a streaming anomaly-scoring service (confluent-kafka + onnxruntime + numpy).

The baseline a user would write instead of the Rust service: consume JSON samples,
keep a per-series context, run the attnwatch forecaster (contract 2) once per --stride
points of a series, batching the runs due in a poll batch into ONNX Runtime calls, score
every point at once against the newest forecast that covers it, publish one JSON result
per scored point. See README.md for usage, limits and what changed from the shared copy.
"""
import argparse
import json
import math
import os
import resource
import signal
import sys
import time
from collections import deque
from datetime import datetime, timezone

import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads: Python, librdkafka, ORT
    return r.ru_utime + r.ru_stime


def parse_ts(ts):
    """Epoch-ms int or RFC3339 string -> epoch ms; None if invalid."""
    if type(ts) is int:
        return ts
    if isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    return None


def is_num(v):
    return (type(v) is float or type(v) is int) and math.isfinite(v)


class Series:
    """Per-series state: a doubled ring buffer of the last C values (each value is written at
    pos and pos+C, so the context is always the contiguous slice buf[pos : pos+C], NaN where
    the series has fewer than C values), the run schedule, the newest forecast, and a running
    mean/variance (Welford) of |z| for the score."""

    __slots__ = ("buf", "pos", "n", "last_ts", "interval", "since_run", "pending", "mean", "std",
                 "top", "k", "zmean", "m2", "run_index")

    def __init__(self, c):
        self.buf = np.full(2 * c, np.nan, np.float32)
        self.pos = 0
        self.n = 0
        self.last_ts = None
        self.interval = 0
        self.since_run = None  # values since the last run; None before the first
        self.pending = False  # a run is queued in the current batch
        self.run_index = None  # its place in the queue (tuned.py)
        self.mean = self.std = self.top = None  # newest forecast (H,), (H,), top-k ranges
        self.k = 0
        self.zmean = 0.0
        self.m2 = 0.0

    def normalise(self, err):
        """z-score of err against this series' past errors, then fold err in."""
        z = 0.0
        if self.k >= 2:
            std = math.sqrt(self.m2 / (self.k - 1))
            if std > 0.0:
                z = (err - self.zmean) / std
        self.k += 1
        d = err - self.zmean
        self.zmean += d / self.k
        self.m2 += d * (err - self.zmean)
        return z


class Batch:
    """Offsets of one poll batch; stored once every message it produced is delivered."""

    __slots__ = ("offsets", "pending", "sealed", "failed")

    def __init__(self):
        self.offsets = {}
        self.pending = 0
        self.sealed = False
        self.failed = None

    def __call__(self, err, msg):  # producer delivery callback
        self.pending -= 1
        if err is not None and self.failed is None:
            self.failed = err


class Model:
    """The attnwatch forecaster (contract 2): context [batch, C, 1] -> forecast_mean and
    forecast_std [batch, H, 1], attention [batch, L, heads, T]."""

    def __init__(self, path, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        meta = self.sess.get_modelmeta().custom_metadata_map
        if meta.get("attnwatch.contract") != "2":
            sys.exit(f"{path}: not an attnwatch contract-2 model")
        self.c = int(meta["attnwatch.context"])
        self.p = int(meta["attnwatch.patch"])
        self.h = int(meta["attnwatch.horizon"])
        self.min_points = int(meta["attnwatch.min_points"])
        self.name = f'{meta["attnwatch.model_name"]}@{meta["attnwatch.model_version"]}'
        self.outputs = ["forecast_mean", "forecast_std", "attention"]

    def describe(self):
        return f"model {self.name}: context {self.c}, patch {self.p}, horizon {self.h}"

    def run(self, x):
        """x [n, C, 1] -> (mean [n, H], std [n, H], token attention [n, T] mean over layers and heads)."""
        mean, std, att = self.sess.run(self.outputs, {"context": x})
        return mean[:, :, 0], std[:, :, 0], att.mean(axis=(1, 2))


class Peer:
    def __init__(self, args, model, producer):
        self.a = args
        self.m = model
        self.p = producer
        self.consumer = None  # set once the consumer exists; offsets are stored through it
        self.c = model.c
        self.series = {}
        self.cap = 0
        self._grow(64)
        self.runs = []  # (series, end_ts) of the contexts queued in self.x
        self.pending = deque()
        self.n_msgs = self.n_points = self.n_scored = self.n_dlq = self.n_infer = self.n_runs = 0
        self.n_bytes = 0  # output payload bytes
        self.t_parse = self.t_infer = self.t_out = 0.0

    def _grow(self, n):
        cap = max(n, 2 * self.cap)
        x = np.zeros((cap, self.c, 1), np.float32)
        if self.cap:
            x[: self.cap] = self.x
        self.x, self.cap = x, cap

    def _new_series(self):
        return Series(self.c)

    def _parse(self, raw):
        return json.loads(raw)

    def _dump(self, rec):
        return json.dumps(rec).encode()

    def _dlq(self, batch, key, value, reason):
        self.n_dlq += 1
        batch.pending += 1
        self._produce(self.a.dlq_topic, value, key, batch, [("reason", reason.encode())])

    def _produce(self, topic, value, key, batch, headers=None):
        while True:
            try:
                self.p.produce(topic, value, key, headers=headers, on_delivery=batch)
                return
            except BufferError:
                self.p.poll(0.05)

    def _flush_runs(self):
        """Run the queued contexts (in calls of at most --max-infer-batch) and store each
        series' new forecast and its top-k attended time ranges."""
        n = len(self.runs)
        if not n:
            return
        t0 = time.perf_counter()
        step = self.a.max_infer_batch or n
        c, p, k = self.c, self.m.p, self.a.topk
        for i in range(0, n, step):
            mean, std, att = self.m.run(self.x[i : min(n, i + step)])
            self.n_infer += 1
            order = np.argsort(-att, axis=1)[:, :k]
            for j in range(len(mean)):
                s, end_ts = self.runs[i + j]
                s.mean, s.std = mean[j], std[j]
                back = (c - 1 - order[j] * p - (p - 1)) * s.interval  # token end: position t*p + p - 1
                s.top = [[end_ts - b - (p - 1) * s.interval, end_ts - b, round(float(att[j, t]), 5)]
                         for t, b in zip(order[j], back.tolist())]
                s.pending = False
        self.n_runs += n
        self.runs.clear()
        self.t_infer += time.perf_counter() - t0

    def _ingest(self, rec, batch):
        """Score one record against its series' forecast and queue the run due on it;
        return a rejection reason, or None."""
        if not isinstance(rec, dict):
            return "not an object"
        sid = rec.get("series")
        if not isinstance(sid, str) or not sid:
            return "missing series"
        ts = parse_ts(rec.get("ts"))
        if ts is None:
            return "bad ts"
        v = rec.get("value")
        if v is None:
            return "missing value"
        if not is_num(v):
            return "bad value"
        s = self.series.get(sid)
        if s is None:
            s = self.series[sid] = self._new_series()
        if s.last_ts is not None and ts <= s.last_ts:
            return "out-of-order ts"
        if s.pending:  # this value is scored against the run queued on the previous one
            self._flush_runs()
        if s.last_ts is not None and not s.interval:
            s.interval = ts - s.last_ts
        if s.since_run is not None and s.since_run < self.m.h and s.mean is not None:
            h = s.since_run
            z = (v - float(s.mean[h])) / float(s.std[h])
            out = {"series": sid, "ts": ts, "value": v, "expected": float(s.mean[h]), "z": z,
                   "score": s.normalise(abs(z)), "top": s.top}
            labels = rec.get("labels")
            if labels is not None:
                out["labels"] = labels
            payload = json.dumps(out)
            batch.pending += 1
            self._produce(self.a.output_topic, payload, sid, batch)
            self.n_scored += 1
            self.n_bytes += len(payload)
        self._append(s, ts, v)
        return None

    def _append(self, s, ts, v):
        """Add v to the series' context and queue the model run due on it, if one is."""
        c, pos = self.c, s.pos
        s.buf[pos] = s.buf[pos + c] = v
        s.pos = pos + 1 if pos + 1 < c else 0
        s.last_ts = ts
        s.n += 1
        step = None if s.since_run is None else s.since_run + 1
        if s.n >= self.m.min_points and (step is None or step >= self.a.stride):
            k = len(self.runs)
            if k >= self.cap:
                self._grow(k + 1)
            self.x[k, :, 0] = s.buf[s.pos : s.pos + c]
            self.runs.append((s, ts))
            s.pending = True
            s.run_index = k
            s.since_run = 0
        else:
            s.since_run = step

    def process(self, msgs):
        batch = Batch()
        self.pending.append(batch)
        t0 = time.perf_counter()
        infer0 = self.t_infer
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log("consume error:", err)
                continue
            self.n_msgs += 1
            batch.offsets[(msg.topic(), msg.partition())] = msg.offset()
            raw = msg.value()
            try:
                obj = self._parse(raw)
            except (ValueError, TypeError):
                self._dlq(batch, msg.key(), raw, "invalid json")
                continue
            recs = obj if isinstance(obj, list) else (obj,)
            for rec in recs:
                self.n_points += 1
                reason = self._ingest(rec, batch)
                if reason is not None:
                    self._dlq(batch, msg.key(), self._dump(rec) if recs is obj else raw, reason)
        self._flush_runs()
        self.t_parse += time.perf_counter() - t0 - (self.t_infer - infer0)
        batch.sealed = True
        self.p.poll(0)
        self.store_done()

    def store_done(self):
        """Store the offsets of leading batches whose outputs are all delivered (in order)."""
        done = {}
        while self.pending and self.pending[0].sealed and self.pending[0].pending == 0:
            b = self.pending.popleft()
            if b.failed is not None:
                raise KafkaException(b.failed)
            done.update(b.offsets)
        if done:
            self.consumer.store_offsets(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in done.items()])

    def drain(self, timeout=30.0):
        self.p.flush(timeout)
        self.store_done()


def main(peer_cls=None, doc=__doc__):
    """Run a peer: `Peer` (this file's, standard-library JSON), or a subclass
    (tuned.py's)."""
    peer_cls = peer_cls or Peer
    env = os.environ.get
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=env("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--input-topic", default=env("PEER_INPUT_TOPIC", "samples"))
    ap.add_argument("--output-topic", default=env("PEER_OUTPUT_TOPIC", "scores"))
    ap.add_argument("--dlq-topic", default=env("PEER_DLQ_TOPIC", "samples-dlq"))
    ap.add_argument("--group", default=env("PEER_GROUP", "python-peer"))
    ap.add_argument("--model", default=env("PEER_MODEL", "model.onnx"), help="ONNX model path (attnwatch contract 2)")
    ap.add_argument("--stride", type=int, default=32, help="one model run per this many points of a series (1..horizon)")
    ap.add_argument("--threads", type=int, default=int(env("PEER_THREADS", "1")), help="ORT intra_op_num_threads")
    ap.add_argument("--batch", type=int, default=1024, help="messages per consume() call")
    ap.add_argument("--poll-timeout", type=float, default=0.5)
    ap.add_argument("--max-infer-batch", type=int, default=64, help="contexts per ORT call; the runs due in a poll batch are split into calls of at most this many (0: one call)")
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--commit-interval-ms", type=int, default=5000)
    ap.add_argument("--max-messages", type=int, default=0, help="stop after consuming this many messages (0: run until idle/signal)")
    ap.add_argument("--idle-exit", type=float, default=0.0, help="stop after this many idle seconds once data has flowed (0: never)")
    ap.add_argument("--summary-json", help="also write the summary as JSON to this file")
    a = ap.parse_args()

    model = Model(a.model, a.threads)
    log(model.describe())
    if not 1 <= a.stride <= model.h:
        sys.exit(f"--stride must be in 1..{model.h}")
    producer = Producer({
        "bootstrap.servers": a.bootstrap,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "acks": "all",
    })
    peer = peer_cls(a, model, producer)

    def on_revoke(c, parts):
        peer.drain()
        try:
            c.commit(asynchronous=False)
        except KafkaException:
            pass

    consumer = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": a.commit_interval_ms,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    })
    peer.consumer = consumer
    consumer.subscribe([a.input_topic], on_revoke=on_revoke)
    c_subscribed = cpu_seconds()  # CPU is counted from here, as scripts/bench counts attnwatch's from /readyz

    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    t_first = None
    t_last = c_last = None
    t_consume = t_wait = 0.0
    last_data = time.monotonic()
    rc = 0
    try:
        while not stop:
            tc = time.perf_counter()
            msgs = consumer.consume(num_messages=a.batch, timeout=a.poll_timeout)
            if t_first is not None:
                t_wait += time.perf_counter() - tc
            if not msgs:
                producer.poll(0)
                peer.store_done()
                if a.idle_exit and t_first is not None and time.monotonic() - last_data > a.idle_exit:
                    break
                continue
            if t_first is None:
                t_first = time.perf_counter()
            last_data = time.monotonic()
            t_consume, t_wait = t_consume + t_wait, 0.0  # idle time after the last data is not counted
            peer.process(msgs)
            if a.max_messages and peer.n_msgs >= a.max_messages:
                break
        peer.drain()
        t_last, c_last = time.perf_counter(), cpu_seconds()
    except KafkaException as e:
        log("fatal:", e)
        rc = 1
    finally:
        producer.flush(30)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException:
            pass
        consumer.close()

    if t_first is None:
        log("no data consumed")
        return rc
    if t_last is None:
        t_last, c_last = time.perf_counter(), cpu_seconds()
    wall, cpu = t_last - t_first, c_last - c_subscribed
    s = {
        "messages": peer.n_msgs,
        "points": peer.n_points,
        "scored": peer.n_scored,
        "dead_letter": peer.n_dlq,
        "inference_calls": peer.n_infer,
        "model_runs": peer.n_runs,
        "series": len(peer.series),
        "batch": a.batch,
        "threads": a.threads,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "scored_per_s": round(peer.n_scored / wall, 1) if wall > 0 else None,
        "messages_per_s": round(peer.n_msgs / wall, 1) if wall > 0 else None,
        "cpu_s_per_1k_scored": round(1000 * cpu / peer.n_scored, 4) if peer.n_scored else None,
        "bytes_per_point": round(peer.n_bytes / peer.n_scored, 1) if peer.n_scored else None,
        "consume_s": round(t_consume, 3),
        "parse_score_produce_s": round(peer.t_parse, 3),
        "infer_s": round(peer.t_infer, 3),
    }
    w = max(len(k) for k in s)
    print("python-peer summary")
    for k, v in s.items():
        print(f"  {k:<{w}}  {v}")
    if a.summary_json:
        with open(a.summary_json, "w") as fh:
            json.dump(s, fh)
    return rc


if __name__ == "__main__":
    sys.exit(main())
