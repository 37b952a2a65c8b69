"""kafka-python's gzip and snappy batches through Meridian's Kafka listener.

Run by tests/it/kafka.rs with the listener's address and a topic of one partition
that Meridian's CLI has already written gzip and snappy batches to (its first
records). Produces 300 records with each of kafka-python's codecs (snappy in
snappy-java's stream format, as Kafka's Java client writes it), then reads the whole
partition back and prints one JSON line: every record's offset, key and value.
Exits non-zero, saying why, if a send fails.
"""

import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.codec import has_snappy

from common import deliver, fail

BOOTSTRAP, TOPIC = sys.argv[1], sys.argv[2]
PER_CODEC = 300


if not has_snappy():
    fail("kafka-python has no snappy codec: install python-snappy (.ci/run does)")

for codec in ["gzip", "snappy"]:
    # Large enough batches that each holds many records (and snappy several blocks).
    producer = KafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        acks="all",
        compression_type=codec,
        linger_ms=50,
        batch_size=256 * 1024,
    )
    sent = [
        producer.send(
            TOPIC, key=f"{codec}-{i}".encode(), value=(f"{codec} {i} " * 40).encode()
        )
        for i in range(PER_CODEC)
    ]
    deliver(producer, sent)

consumer = KafkaConsumer(
    bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", enable_auto_commit=False
)
partition = TopicPartition(TOPIC, 0)
consumer.assign([partition])
end = consumer.end_offsets([partition])[partition]
records = []
while not records or records[-1][0] < end - 1:
    polled = consumer.poll(timeout_ms=10_000)
    if not polled:
        fail(f"no records after offset {records[-1][0] if records else None} of {end}")
    for batch in polled.values():
        records.extend([r.offset, r.key.decode(), r.value.decode()] for r in batch)
consumer.close()
print(json.dumps({"end": end, "records": records}))
