"""kafka-python, a Kafka client by others, against Meridian's Kafka listener.

Run by tests/it/kafka.rs with the listener's address (or a region's Kafka
bootstrap list and the topic's replication factor): creates a topic, produces
keyed records with acks=all, then two consumers of one group share its partitions,
read every record, commit, and the survivor takes everything when the other leaves.
Prints one JSON line of what it saw; exits non-zero, saying why, on any mismatch.
"""

import json
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from common import create_topic, fail

BOOTSTRAP = sys.argv[1]  # one address, or a region's list "host:port,host:port"
REPLICATION = int(sys.argv[2]) if len(sys.argv) > 2 else 1
TOPIC, GROUP, PARTITIONS, RECORDS = "py-orders", "py-group", 4, 2000


admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="it-admin")
create_topic(admin, TOPIC, PARTITIONS, REPLICATION)

producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
sent = [
    producer.send(TOPIC, key=f"k{i % 25}".encode(), value=f"{i}".encode())
    for i in range(RECORDS)
]
producer.flush()
sent = [f.get(timeout=30) for f in sent]
producer.close()


def consumer(name):
    return KafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        client_id=name,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        heartbeat_interval_ms=200,
        session_timeout_ms=10000,
    )


first, second = consumer("first"), consumer("second")
ends = first.end_offsets([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])


def caught_up(c):
    """Whether `c` has read each partition it holds to the end. A partition that
    moved in a rebalance is read again from the start by its new owner (nothing was
    committed yet), so having seen every record is not enough to commit the ends."""
    return all(c.position(tp) == ends[tp] for tp in c.assignment())


seen = {}  # (partition, offset) -> (key, value)
deadline = time.time() + 90
while time.time() < deadline:
    for c in (first, second):
        for records in c.poll(timeout_ms=100).values():
            for r in records:
                seen[(r.partition, r.offset)] = (r.key, r.value)
    a, b = first.assignment(), second.assignment()
    settled = len(a) == 2 and len(b) == 2 and not (a & b)
    if len(seen) == RECORDS and settled and caught_up(first) and caught_up(second):
        break
else:
    fail(f"saw {len(seen)} records; assignments {first.assignment()} {second.assignment()}")

# Every record once, where the producer was told it went.
if len(seen) != RECORDS:
    fail(f"saw {len(seen)} records, sent {RECORDS}")
for i, meta in enumerate(sent):
    expected = (f"k{i % 25}".encode(), f"{i}".encode())
    if seen.get((meta.partition, meta.offset)) != expected:
        fail(f"record {i} sent to {meta.partition}/{meta.offset}, read {seen.get((meta.partition, meta.offset))}")

for c in (first, second):
    c.commit()
committed = {
    tp.partition: c.committed(tp) for c in (first, second) for tp in c.assignment()
}
if committed != {tp.partition: end for tp, end in ends.items()}:
    fail(f"committed {committed}, end offsets {ends}")
split = [sorted(tp.partition for tp in c.assignment()) for c in (first, second)]

# Kafka's group tools: the group is listed and described, Stable, both members in.
groups = admin.list_groups()
if GROUP not in json.dumps(groups, default=str):
    fail(f"{GROUP} not listed: {groups}")
described = json.dumps(admin.describe_groups([GROUP]), default=str)
for expected in ("Stable", "first", "second"):
    if expected not in described:
        fail(f"no {expected} in the description: {described}")

# The first leaves; the second is told to rebalance and takes every partition.
first.close()
deadline = time.time() + 60
while len(second.assignment()) < PARTITIONS and time.time() < deadline:
    second.poll(timeout_ms=100)
if len(second.assignment()) != PARTITIONS:
    fail(f"after the first left, the second has {second.assignment()}")
second.close()

print(json.dumps({"records": len(seen), "split": split, "committed": committed}))
