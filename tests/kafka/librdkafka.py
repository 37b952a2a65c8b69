"""librdkafka (through confluent-kafka, its Python binding) against Meridian's Kafka
listener: the C client under most non-Java Kafka clients (Python, Go, .NET, C++,
kcat). Run by tests/it/kafka_rdkafka.rs as

    librdkafka.py BOOTSTRAP CONFIG ACTION PREFIX

CONFIG is a JSON object of librdkafka settings added to every client (security,
SASL), `{}` for none. ACTION is one of:

- `roundtrip`: for each of the codecs zstd, lz4, snappy, gzip and none, create
  topic PREFIX-CODEC (3 partitions) with the admin client and send 600 keyed
  records to it from an idempotent producer (acks=all) compressing with that
  codec; then one consumer of group PREFIX-group subscribes to all five topics,
  reads every record and commits synchronously. Prints {"produced": N,
  "consumed": N, "duplicates": N, "keys_in_order": bool, "committed": {topic/p:
  offset}, "ends": {topic/p: high watermark}};
- `login`: ask for the cluster's topics; prints {"result": "ok"} or the error.

Exits non-zero, saying why, on anything else.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import fail

BOOTSTRAP, CONFIG, ACTION, PREFIX = sys.argv[1:5]
CONF = {"bootstrap.servers": BOOTSTRAP, "log_level": 0, **json.loads(CONFIG)}
CODECS = ["zstd", "lz4", "snappy", "gzip", "none"]
PER_TOPIC = 600
KEYS = 40


def roundtrip():
    topics = [f"{PREFIX}-{codec}" for codec in CODECS]
    admin = AdminClient(CONF)
    for topic, future in admin.create_topics(
        [NewTopic(t, num_partitions=3, replication_factor=1) for t in topics]
    ).items():
        future.result(timeout=30)
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    produced = 0
    for codec, topic in zip(CODECS, topics):
        producer = Producer(
            {
                **CONF,
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": codec,
                "linger.ms": 5,
            }
        )
        for i in range(PER_TOPIC):
            producer.produce(
                topic,
                key=f"k{i % KEYS}".encode(),
                value=f"{codec} {i}".encode(),
                on_delivery=delivered,
            )
            producer.poll(0)
            produced += 1
        if producer.flush(30) != 0:
            fail(f"{codec}: records left unsent after 30 s")
    if failures:
        fail(f"deliveries failed: {failures[:3]}")

    consumer = Consumer(
        {
            **CONF,
            "group.id": f"{PREFIX}-group",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(topics)
    seen, last_by_key, in_order, duplicates = set(), {}, True, 0
    deadline = time.time() + 90
    while len(seen) < produced and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            fail(f"consumer error: {msg.error()}")
        codec, i = msg.value().decode().split()
        if (codec, int(i)) in seen:
            duplicates += 1
        seen.add((codec, int(i)))
        key = (msg.topic(), msg.key())
        if last_by_key.get(key, -1) >= int(i):
            in_order = False
        last_by_key[key] = int(i)
    if len(seen) < produced:
        fail(f"read {len(seen)} of {produced} records in 90 s")
    consumer.commit(asynchronous=False)
    partitions = [TopicPartition(t, p) for t in topics for p in range(3)]
    committed = {
        f"{tp.topic}/{tp.partition}": tp.offset
        for tp in consumer.committed(partitions, timeout=10)
    }
    ends = {
        f"{tp.topic}/{tp.partition}": consumer.get_watermark_offsets(tp, timeout=10)[1]
        for tp in partitions
    }
    consumer.close()
    return {
        "produced": produced,
        "consumed": len(seen),
        "duplicates": duplicates,
        "keys_in_order": in_order,
        "committed": committed,
        "ends": ends,
    }


def login():
    admin = AdminClient(CONF)
    try:
        admin.list_topics(timeout=8)
        return {"result": "ok"}
    except KafkaException as e:
        return {"result": e.args[0].name()}


ACTIONS = {"roundtrip": roundtrip, "login": login}
if ACTION not in ACTIONS:
    fail(f"unknown action {ACTION}")
print(json.dumps(ACTIONS[ACTION]()))
