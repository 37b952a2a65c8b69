"""What the kafka-python scripts beside this file share."""

import faulthandler
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic


def fail(why):
    """Ends the script, saying why; the Rust test shows it."""
    print(f"FAILED: {why}", file=sys.stderr)
    sys.exit(1)


def read_by_group(acknowledged, read, lock, reading, members):
    """Waits up to 90 s for a group to read every record in `acknowledged`
    ([number, partition, offset] each) into `read` (a set of numbers, under
    `lock`), then tells its `members` (threads) to stop (`reading`) and waits for
    them, failing with every thread's stack if one does not stop within 60 s.
    Returns how many acknowledged records the group did not read."""
    deadline = time.time() + 90
    while True:
        with lock:
            unread = len({a[0] for a in acknowledged} - read)
        if unread == 0 or time.time() >= deadline:
            break
        time.sleep(0.2)
    reading.set()
    for m in members:
        m.join(60)
        if m.is_alive():
            faulthandler.dump_traceback(all_threads=True)
            fail("a consumer did not stop within 60 s (its stack is above)")
    return unread


def create_topic(admin, name, partitions, replication=1):
    """Creates a topic and waits until the broker asked lists it (in a region it
    may learn of the topic a moment after the controller)."""
    admin.create_topics([NewTopic(name, partitions, replication)])
    deadline = time.time() + 30
    while name not in admin.list_topics():
        if time.time() > deadline:
            fail(f"the created topic {name} is not listed")
        time.sleep(0.2)


def deliver(producer, sent):
    """Flushes `producer`, waits for every send in `sent` (each raises if its record
    was refused), then closes it."""
    producer.flush()
    for future in sent:
        future.get(timeout=30)
    producer.close()


def roundtrip(bootstrap, topic, records, value, config):
    """Creates `topic` (2 partitions), produces `records` records with acks=all whose
    values are `value(i)`, reads them all back, every client made with `config`;
    returns {"produced": N, "consumed": N, "values_match": bool}."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **config)
    create_topic(admin, topic, 2)
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **config)
    sent = [
        producer.send(topic, key=f"k{i}".encode(), value=value(i).encode())
        for i in range(records)
    ]
    deliver(producer, sent)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **config,
    )
    consumer.assign([TopicPartition(topic, p) for p in range(2)])
    values = []
    while len(values) < records:
        polled = consumer.poll(timeout_ms=10_000)
        if not polled:
            fail(f"only {len(values)} of {records} records read back")
        for batch in polled.values():
            values.extend(r.value.decode() for r in batch)
    consumer.close()
    return {
        "produced": len(sent),
        "consumed": len(values),
        "values_match": sorted(values) == sorted(value(i) for i in range(records)),
    }


def produce_one(bootstrap, topic, config, max_block_ms=10_000):
    """Sends one record to `topic` with acks=all; {"result": "ok"}, or the name of
    the Kafka error that stopped it (connecting, logging in or producing)."""
    from kafka.errors import KafkaError

    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", max_block_ms=max_block_ms, **config
        )
    except KafkaError as e:
        return {"result": type(e).__name__}
    try:
        producer.send(topic, value=b"one").get(timeout=30)
        return {"result": "ok"}
    except KafkaError as e:
        return {"result": type(e).__name__}
    finally:
        producer.close(timeout=5)
