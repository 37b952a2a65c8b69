"""kafka-python and a LogAppendTime topic through Meridian's Kafka listener.

Run by tests/it/kafka.rs with the listener's address and a topic of one partition
created with message.timestamp.type=LogAppendTime. Sends two records dated
1970-01-01T00:00:01Z and ten years ahead, then reads them back, and prints one JSON
line: the milliseconds before and after the sends, each send's metadata timestamp,
and each record read as [timestamp, timestamp type] (1: LogAppendTime). Exits
non-zero if a send fails (the exception says why) or the records do not come back.
"""

import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from common import deliver, fail

BOOTSTRAP, TOPIC = sys.argv[1], sys.argv[2]
TEN_YEARS_MS = 10 * 365 * 86_400_000

before = int(time.time() * 1000)
producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
sent = [
    producer.send(TOPIC, value=b"x", partition=0, timestamp_ms=timestamp)
    for timestamp in [1000, before + TEN_YEARS_MS]
]
deliver(producer, sent)
after = int(time.time() * 1000)

consumer = KafkaConsumer(
    bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", enable_auto_commit=False
)
partition = TopicPartition(TOPIC, 0)
consumer.assign([partition])
read = []
while len(read) < 2:
    polled = consumer.poll(timeout_ms=10_000)
    if not polled:
        fail(f"only {len(read)} records came back")
    for batch in polled.values():
        read.extend([r.timestamp, r.timestamp_type] for r in batch)
consumer.close()
sent = [future.get().timestamp for future in sent]
print(json.dumps({"before": before, "after": after, "sent": sent, "read": read}))
