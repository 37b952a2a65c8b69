"""kafka-python authenticating with SASL to Meridian's Kafka listener
(`kafka_sasl_users_file`).

Run by tests/it/kafka_sasl.rs as

    sasl.py BOOTSTRAP CAFILE MECHANISM USER PASSWORD ACTION TOPIC

CAFILE is the PEM the broker's certificate is checked against (`SASL_SSL`), or `-`
for `SASL_PLAINTEXT`. MECHANISM is `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, or
`-` to connect without SASL (`PLAINTEXT`, or `SSL` with CAFILE). ACTION is one of:

- `roundtrip`: create TOPIC (2 partitions), produce 100 records with acks=all,
  read them all back; prints {"produced": N, "consumed": N, "values_match": bool};
- `produce`: send one record to TOPIC; prints {"result": "ok"} or the name of the
  Kafka error that refused it (a failed login shows as the error it raised);
- `keep-producing`: one producer sends a record to TOPIC every half second for 8
  seconds, waiting up to 2 s for each; prints {"results": [...]}, each "ok" or the
  name of the error.

Exits non-zero, saying why, on anything else.
"""

import json
import sys

import common
from common import fail

BOOTSTRAP, CAFILE, MECHANISM, USER, PASSWORD, ACTION, TOPIC = sys.argv[1:8]
RECORDS = 100

CONFIG = {"request_timeout_ms": 10_000}
if MECHANISM == "-":
    CONFIG["security_protocol"] = "PLAINTEXT" if CAFILE == "-" else "SSL"
else:
    CONFIG["security_protocol"] = "SASL_PLAINTEXT" if CAFILE == "-" else "SASL_SSL"
    CONFIG["sasl_mechanism"] = MECHANISM
    CONFIG["sasl_plain_username"] = USER
    CONFIG["sasl_plain_password"] = PASSWORD
if CAFILE != "-":
    CONFIG["ssl_cafile"] = CAFILE


def roundtrip():
    return common.roundtrip(BOOTSTRAP, TOPIC, RECORDS, lambda i: f"{USER} {i}", CONFIG)


def produce():
    return common.produce_one(BOOTSTRAP, TOPIC, CONFIG, max_block_ms=5_000)


def keep_producing():
    import time

    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, **CONFIG)
    common.create_topic(admin, TOPIC, 1)
    admin.close()
    producer = KafkaProducer(
        bootstrap_servers=BOOTSTRAP, acks="all", max_block_ms=2_000, **CONFIG
    )
    results = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        try:
            producer.send(TOPIC, value=b"again").get(timeout=2)
            results.append("ok")
        except KafkaError as e:
            results.append(type(e).__name__)
        time.sleep(0.5)
    try:
        producer.close(timeout=2)
    except KafkaError:
        pass  # records it could no longer deliver, counted above
    return {"results": results}


ACTIONS = {"roundtrip": roundtrip, "produce": produce, "keep-producing": keep_producing}
if ACTION not in ACTIONS:
    fail(f"unknown action {ACTION}")
print(json.dumps(ACTIONS[ACTION]()))
