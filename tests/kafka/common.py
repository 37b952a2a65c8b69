"""What the kafka-python scripts beside this file share."""

import sys
import time

from kafka.admin import NewTopic


def fail(why):
    """Ends the script, saying why; the Rust test shows it."""
    print(f"FAILED: {why}", file=sys.stderr)
    sys.exit(1)


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
