"""kafka-python's admin client against Meridian's Kafka listener.

Run by tests/it/kafka.rs with the listener's address: changes a topic's settings
(IncrementalAlterConfigs), reads them back as `kafka-configs --describe` does
(DescribeConfigs, modified only and all), resets one, adds partitions, describes
them a page at a time (DescribeTopicPartitions), deletes the records below an offset, reads two of the broker's own settings, and creates a
topic on the broker's defaults (validated only, then made), reading what they came
to from the answer, and the ID it was given, then describes it by that ID, and
deletes another topic by its ID. Prints
one JSON line of what it saw; exits non-zero, saying why, on any mismatch.
"""

import base64
import json
import sys
import uuid

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions

from common import create_topic, fail

BOOTSTRAP = sys.argv[1]
TOPIC = "py-admin"


def topic(configs=None):
    return ConfigResource(ConfigResourceType.TOPIC, TOPIC, configs)


admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="it-admin")
create_topic(admin, TOPIC, 2, 1)

altered = admin.alter_configs([topic({"retention.ms": "3600000", "segment.ms": "600000"})])
if altered != {"topic": {TOPIC: "OK"}}:
    fail(f"alter_configs answered {altered}")


def modified():
    described = admin.describe_configs([topic()])
    return {k: v["value"] for k, v in described["topic"][TOPIC].items()}


if modified() != {"retention.ms": "3600000", "segment.ms": "600000"}:
    fail(f"modified settings: {modified()}")
everything = admin.describe_configs([topic()], config_filter="all")["topic"][TOPIC]
if everything.get("cleanup.policy", {}).get("value") != "delete":
    fail(f"all settings: {everything}")

# A bad value is refused with Kafka's error and Meridian's reason.
refused = admin.alter_configs([topic({"retention.ms": "-7"})])["topic"][TOPIC]
if "InvalidConfig" not in refused:
    fail(f"a negative retention.ms was answered {refused}")

admin.reset_configs([topic(["segment.ms"])])
after_reset = modified()
if after_reset != {"retention.ms": "3600000"}:
    fail(f"after resetting segment.ms: {after_reset}")

admin.create_partitions({TOPIC: NewPartitions(4)})
partitions = len(admin.describe_topics([TOPIC])[0]["partitions"])
if partitions != 4:
    fail(f"{partitions} partitions after growing to 4")

# A page at a time (DescribeTopicPartitions, KIP-966): three partitions, then the
# rest from where the first page's cursor says.
pages = []
cursor = None
while len(pages) < 5:
    page = admin.describe_topic_partitions([TOPIC], response_partition_limit=3, cursor=cursor)
    pages.append([p["partition_index"] for t in page["topics"] for p in t["partitions"]])
    cursor = page["next_cursor"]
    if cursor is None:
        break

producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
for i in range(10):
    producer.send(TOPIC, value=f"{i}".encode(), partition=3)
producer.flush()
producer.close()
deleted = admin.delete_records({TopicPartition(TOPIC, 3): 4})
low = {tp.partition: meta["low_watermark"] for tp, meta in deleted.items()}
if low != {3: 4}:
    fail(f"delete_records answered {deleted}")

# The broker's own settings, read-only, as `kafka-configs --describe
# --entity-type brokers` reads them.
broker = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")],
                                config_filter="all")["broker"]["1"]
broker_settings = {
    name: [broker[name]["value"], broker[name]["config_source"], broker[name]["read_only"]]
    for name in ("log.retention.ms", "kafka_listen")
}



def as_uuid(topic_id):
    """A topic ID as kafka-python's answers give it (text, or None for Kafka's
    zero UUID), as the UUID its requests take."""
    return None if topic_id is None else uuid.UUID(str(topic_id))


def created(validate_only):
    """Creates `py-defaults` leaving its partitions and replication factor to the
    broker (-1 each, as kafka-python sends them unset), and returns what the answer
    says they came to, with two of the settings it lists (CreateTopics v5 on: what
    Java's `CreateTopicsResult.numPartitions` and `config` read), and the topic's
    ID (v7 on)."""
    answer = admin.create_topics({"py-defaults": {"configs": {"retention.ms": "60000"}}},
                                 validate_only=validate_only)
    t = answer["topics"][0]
    configs = t.get("configs") or {}
    settings = {name: [configs[name]["value"], configs[name]["config_source"]]
                for name in ("retention.ms", "cleanup.policy") if name in configs}
    return ({"partitions": t["num_partitions"], "replication_factor": t["replication_factor"],
             "settings": settings}, as_uuid(t["topic_id"]))


would_be, validated_id = created(validate_only=True)
if "py-defaults" in admin.list_topics():
    fail("a validate-only create made the topic")
# kafka-python reads Kafka's zero UUID, "no ID", as None.
NO_ID = (None, uuid.UUID(int=0))
if validated_id not in NO_ID:
    fail(f"a validate-only create answered topic ID {validated_id}")
made, made_id = created(validate_only=False)

# The topic's ID (KIP-516): the same in Metadata by name, and it names the topic in
# Metadata by ID (v12); an ID no topic has is UNKNOWN_TOPIC_ID.
by_name = as_uuid(admin.describe_topics(["py-defaults"])[0]["topic_id"])
if by_name != made_id or made_id in NO_ID:
    fail(f"created with topic ID {made_id}, described by name with {by_name}")
by_id = [(t["name"], t["error_code"]) for t in admin.describe_topics([made_id])]
if by_id != [("py-defaults", 0)]:
    fail(f"describing topic ID {made_id} answered {by_id}")
unknown = [(t["name"], t["error_code"]) for t in admin.describe_topics([uuid.uuid4()])]
if unknown != [(None, 100)]:
    fail(f"describing an unknown topic ID answered {unknown}")
made_id_text = base64.urlsafe_b64encode(made_id.bytes).rstrip(b"=").decode()

# Deleted by ID (DeleteTopics v6): that topic; asked again, UNKNOWN_TOPIC_ID.
doomed = admin.create_topics({"py-doomed": {}})["topics"][0]
doomed_id = as_uuid(doomed["topic_id"])


def deleted_by_id(**options):
    answer = admin.delete_topics([doomed_id], **options)["topics"]
    return [[t["name"], as_uuid(t["topic_id"]) == doomed_id, t["error_code"]] for t in answer]


deleted = deleted_by_id()
if "py-doomed" in admin.list_topics():
    fail("py-doomed is there after its deletion by ID")
deleted_again = deleted_by_id(raise_errors=False)

print(json.dumps({"modified": after_reset, "partitions": partitions, "pages": pages,
                  "low_watermark": low[3],
                  "broker": broker_settings, "validated": would_be, "created": made,
                  "topic_id": made_id_text, "deleted_by_id": deleted,
                  "deleted_again": deleted_again}))
