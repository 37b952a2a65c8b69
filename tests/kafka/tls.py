"""kafka-python over TLS to Meridian's Kafka listener (`kafka_tls`).

Run by tests/it/kafka.rs as

    tls.py BOOTSTRAP CAFILE CERT KEY ACTION TOPIC

CAFILE is the PEM the broker's certificate is checked against; CERT and KEY are the
client's certificate and key, or `-` to present none. ACTION is one of:

- `roundtrip`: create TOPIC (2 partitions), produce 200 records with acks=all over
  TLS, read them all back; prints {"produced": N, "consumed": N, "values_match": bool};
- `produce`: send one record to TOPIC; prints {"result": "ok"} or the name of the
  Kafka error that refused it;
- `refused`: what a client refused whole gets: create TOPIC, consume TOPIC in group
  `TOPIC-group`, ask for a reassignment list; prints {"create": ..., "group": ...,
  "cluster": ...}, each the name of the Kafka error or "ok" (a closed connection
  would show as a time-out); then, refused in part, deletes group `alice.g`'s
  commits of `alice.orders` and TOPIC (`offsets_deleted`: the error per partition);
- `plaintext`: connect without TLS; prints {"result": "connected"} or the name of the
  error.

Exits non-zero, saying why, on anything else.
"""

import json
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

import common
from common import fail

BOOTSTRAP, CAFILE, CERT, KEY, ACTION, TOPIC = sys.argv[1:7]
RECORDS = 200

TLS = {
    "security_protocol": "SSL",
    "ssl_cafile": CAFILE,
}
if CERT != "-":
    TLS["ssl_certfile"] = CERT
    TLS["ssl_keyfile"] = KEY


def error_name(e):
    return type(e).__name__


def roundtrip():
    return common.roundtrip(BOOTSTRAP, TOPIC, RECORDS, lambda i: f"over tls {i}", TLS)


def produce():
    return common.produce_one(BOOTSTRAP, TOPIC, TLS)


def refused():
    from kafka.admin import NewTopic

    seen = {}
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=10_000, **TLS)
    try:
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
        seen["create"] = "ok"
    except KafkaError as e:
        seen["create"] = error_name(e)
    try:
        admin.list_partition_reassignments()
        seen["cluster"] = "ok"
    except KafkaError as e:
        seen["cluster"] = error_name(e)
    admin.close()
    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=f"{TOPIC}-group",
        request_timeout_ms=10_000,
        consumer_timeout_ms=10_000,
        **TLS,
    )
    try:
        for _ in consumer:
            pass
        seen["group"] = "ok"
    except KafkaError as e:
        seen["group"] = error_name(e)
    consumer.close()
    # Refused in part: the topic it may read loses its commit, the other answers
    # TOPIC_AUTHORIZATION_FAILED, as Kafka's OffsetDelete does.
    from kafka.structs import OffsetAndMetadata

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=10_000, **TLS)
    mine, theirs = TopicPartition("alice.orders", 0), TopicPartition(TOPIC, 0)
    admin.alter_group_offsets("alice.g", {mine: OffsetAndMetadata(1, "", -1)})
    deleted = admin.delete_group_offsets("alice.g", [mine, theirs])
    seen["offsets_deleted"] = {
        f"{tp.topic}/{tp.partition}": e.__name__ for tp, e in sorted(deleted.items())
    }
    seen["committed_after"] = len(admin.list_group_offsets(["alice.g"]).get("alice.g", {}))
    admin.close()
    return seen


def plaintext():
    try:
        producer = KafkaProducer(
            bootstrap_servers=BOOTSTRAP,
            security_protocol="PLAINTEXT",
            request_timeout_ms=5000,
            max_block_ms=5000,
        )
    except KafkaError as e:
        return {"result": error_name(e)}
    producer.close(timeout=5)
    return {"result": "connected"}


ACTIONS = {
    "roundtrip": roundtrip,
    "produce": produce,
    "refused": refused,
    "plaintext": plaintext,
}
if ACTION not in ACTIONS:
    fail(f"unknown action {ACTION}")
print(json.dumps(ACTIONS[ACTION]()))
