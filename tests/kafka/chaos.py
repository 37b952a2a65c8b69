"""kafka-python, with brokers killed and restarted under it.

Run by tests/it/cluster.rs as `chaos.py BOOTSTRAP TOPIC` against a region's Kafka
listeners and an existing topic, while the test kills (kill -9) and restarts the
region's brokers. kafka-python's producer, idempotent by default (acks=all),
sends records numbered 0, 1, 2, … (value the number in eight digits, key
k(number % 97)); a group of two consumers (TOPIC-readers, a thread each) reads
them and commits after every poll that read something. Prints `ready` once 200
records are sent; on a line on stdin stops sending, flushes, waits up to 90 s for
the group to read every acknowledged record, and prints {"acknowledged":
[[number, partition, offset]], "failed": {error: records}, "unsent": N,
"unread": N, "commit_errors": {error: commits}, "poll_errors": {error: polls},
"members": [{"assigned": [[partition]], "read": N, "crash": traceback if its
thread died}]}. Exits non-zero, saying why, if a consumer does not stop.
"""

import json
import logging
import os
import sys
import threading
import time
import traceback

from kafka import KafkaConsumer, KafkaProducer

from common import read_by_group

BOOTSTRAP, TOPIC = sys.argv[1].split(","), sys.argv[2]
# kafka-python's warnings (a coordinator lost, a join failed) go to stderr, which
# the test shows when the group did not read everything; KAFKA_PYTHON_LOG_LEVEL
# (e.g. INFO: joins, assignments) for more, and KAFKA_PYTHON_DEBUG the loggers
# (comma-separated, e.g. kafka.coordinator) to log everything of.
logging.basicConfig(level=os.environ.get("KAFKA_PYTHON_LOG_LEVEL", "WARNING"),
                    format="%(asctime)s %(threadName)s %(name)s: %(message)s")
for name in os.environ.get("KAFKA_PYTHON_DEBUG", "").split(","):
    if name:
        logging.getLogger(name).setLevel(logging.DEBUG)

stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
lock = threading.Lock()
acknowledged, failed, read, commit_errors, poll_errors = [], {}, set(), {}, {}
reading = threading.Event()


def count(into, err):
    with lock:
        into[type(err).__name__] = into.get(type(err).__name__, 0) + 1


def member(seen_by):
    try:
        read_as_member(seen_by)
    except BaseException:  # noqa: BLE001 - said in the output: the test fails with it
        seen_by["crash"] = traceback.format_exc()
        raise


def read_as_member(seen_by):
    consumer = KafkaConsumer(TOPIC, bootstrap_servers=BOOTSTRAP, group_id=f"{TOPIC}-readers",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
    while not reading.is_set():
        try:
            polled = consumer.poll(timeout_ms=100)
        except Exception as e:  # noqa: BLE001 - counted by kind, for the test to judge
            # kafka-python 3.0.12 raises a failed metadata refresh out of poll()
            # (its coordinator lookup meets a killed broker); an application
            # polls again, as this member does.
            count(poll_errors, e)
            time.sleep(0.1)
            continue
        values = [int(r.value.decode()) for records in polled.values() for r in records]
        with lock:
            read.update(values)
            seen_by["read"] += len(values)
        assigned = sorted(tp.partition for tp in consumer.assignment())
        if not seen_by["assigned"] or seen_by["assigned"][-1] != assigned:
            seen_by["assigned"].append(assigned)
        if values:
            try:
                consumer.commit()
            except Exception as e:  # noqa: BLE001 - counted by kind, for the test to judge
                count(commit_errors, e)
    consumer.close()


# What each member was given and read, for a failure to tell.
seen_by = [{"assigned": [], "read": 0} for _ in range(2)]
members = [threading.Thread(target=member, args=(s,), daemon=True) for s in seen_by]
for m in members:
    m.start()


def delivered(i):
    def on(metadata):
        with lock:
            acknowledged.append([i, metadata.partition, metadata.offset])
    return on


producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=2, batch_size=4096)
futures = []
i = 0
while not stop.is_set():
    try:
        future = producer.send(TOPIC, key=f"k{i % 97}".encode(), value=f"{i:08}".encode())
    except Exception as e:  # noqa: BLE001 - a send refused before it was queued
        count(failed, e)
        time.sleep(0.1)
        continue
    future.add_callback(delivered(i)).add_errback(lambda e: count(failed, e))
    futures.append(future)
    i += 1
    if i == 200:
        print("ready", flush=True)
    if i % 20 == 0:
        time.sleep(0.002)
producer.flush(timeout=120)
unsent = sum(1 for f in futures if not f.is_done)
producer.close(timeout=10)

unread = read_by_group(acknowledged, read, lock, reading, members)
print(json.dumps({"acknowledged": acknowledged, "failed": failed, "unsent": unsent,
                  "unread": unread, "commit_errors": commit_errors, "poll_errors": poll_errors,
                  "members": seen_by}))
