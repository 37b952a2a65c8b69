"""kafka-python's admin client managing consumer groups on Meridian's Kafka listener.

Run by tests/it/kafka.rs with the listener's address, as `kafka-consumer-groups`
would: sets a group's offsets (OffsetCommit without a member), reads them
(OffsetFetch), deletes one partition's (OffsetDelete), is refused both while a
consumer of another group is running (GROUP_SUBSCRIBED_TO_TOPIC per partition of
the topic it reads, while the commit of a topic it does not read goes; NON_EMPTY_GROUP),
then deletes both groups once it has left (DeleteGroups).
Prints one JSON line of what it saw; exits non-zero, saying why, on any mismatch.
"""

import json
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from common import create_topic, fail

BOOTSTRAP = sys.argv[1]
TOPIC, OTHER, IDLE, BUSY = "py-groups", "py-other", "py-idle", "py-busy"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
OTHER0 = TopicPartition(OTHER, 0)


def names(errors):
    """{TopicPartition: error class} as {"topic/partition": "ErrorName"}."""
    return {f"{tp.topic}/{tp.partition}": e.__name__ for tp, e in sorted(errors.items())}


def committed(group):
    listed = admin.list_group_offsets([group]).get(group, {})
    return {f"{tp.topic}/{tp.partition}": o.offset for tp, o in sorted(listed.items())}


admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="it-groups")
create_topic(admin, TOPIC, 2, 1)
create_topic(admin, OTHER, 1, 1)
producer = KafkaProducer(bootstrap_servers=BOOTSTRAP)
for i in range(10):
    producer.send(TOPIC, value=f"{i}".encode(), partition=i % 2)
producer.close()

seen = {}
altered = admin.alter_group_offsets(
    IDLE, {TP0: OffsetAndMetadata(3, "", -1), TP1: OffsetAndMetadata(5, "", -1)}
)
seen["altered"] = names(altered)
seen["committed"] = committed(IDLE)
seen["offsets_deleted"] = names(admin.delete_group_offsets(IDLE, [TP0]))
seen["committed_after"] = committed(IDLE)

# A running consumer of BUSY: its group is not deletable, nor its offsets of the
# topic it reads; its commit of OTHER (made before it joined) is.
admin.alter_group_offsets(BUSY, {OTHER0: OffsetAndMetadata(2, "", -1)})
consumer = KafkaConsumer(
    TOPIC,
    bootstrap_servers=BOOTSTRAP,
    group_id=BUSY,
    auto_offset_reset="earliest",
    enable_auto_commit=False,
)
records = 0
deadline = time.time() + 30
while records < 10:
    if time.time() > deadline:
        fail(f"the busy consumer read {records} of 10 records")
    records += sum(len(batch) for batch in consumer.poll(timeout_ms=1000).values())
consumer.commit()
seen["busy_offsets_deleted"] = names(admin.delete_group_offsets(BUSY, [TP0, TP1, OTHER0]))
seen["busy_committed"] = committed(BUSY)
seen["busy_deleted"] = admin.delete_groups([BUSY])
consumer.close()

seen["deleted"] = admin.delete_groups([BUSY, IDLE])
seen["deleted_again"] = admin.delete_groups([IDLE])
seen["listed_after"] = sorted(
    g["group_id"] for g in admin.list_groups() if g["group_id"] in (IDLE, BUSY)
)
print(json.dumps(seen))
