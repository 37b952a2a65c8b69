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
- `cooperative`: create topic PREFIX-coop (6 partitions), send 1200 keyed records;
  consumer A of group PREFIX-coop (`cooperative-sticky`) takes all six partitions
  and reads every record, committing nothing; then consumer B joins (polling on a
  thread of its own) and A gives up B's share, taking 1.5 s before it commits what
  it read of them; B then leaves and A takes its partitions back. Prints {"a_events": [["assign" or "revoke", partitions], ...] (A's
  rebalance callbacks before it closes), "split": [A's, B's], "overlap": bool,
  "consumed": distinct records read, "duplicates": records read again, "records":
  N};
- `login`: ask for the cluster's topics; prints {"result": "ok"} or the error.
- `admin`: the admin client's describe_cluster; then create topic PREFIX-conf
  with retention.ms and give it segment.ms alone with alter_configs (Kafka's legacy
  AlterConfigs, which replaces a topic's settings), and describe_configs; then
  send it three records timestamped now, now + 5 s and now + 3 s, and list_offsets
  with OffsetSpec.max_timestamp() (ListOffsets version 7). Prints {"cluster_id",
  "controller": id, "nodes": [[id, host, port], ...], "own": {setting: value}
  (those not at the default), "max_timestamp": [offset, timestamp - now]}.
- `failover`: read topic PREFIX (partition 0) from offset 0 with no offset reset
  allowed (`auto.offset.reset=error`); after 10 records print `ready` and go on
  until 15 records (the test moves the partition's leader meanwhile). Prints
  {"offsets": [...]}.

- `chaos`: topic PREFIX exists (the test made it); an idempotent producer
  (acks=all) sends records `00000000`, `00000001`, ... keyed `k{i % 97}` to it,
  and two consumers of group PREFIX-readers read it and commit synchronously after
  every poll that returned records, until a line comes on stdin (the test kills
  and restarts brokers meanwhile; it prints `ready` once records flow). Then the
  producer flushes and the group reads on until it has read every acknowledged
  record (90 s at most). Prints {"acknowledged": [[i, partition, offset], ...],
  "failed": {error: count}, "unsent": N, "unread": N, "commit_errors": {error name: count},
  "consumer_errors": {error: count}, "members": [{"assigned": [[partition, ...]
  at each assignment], "read": N}, ...], "fatal": error or null, "stuck":
  [[partition, broker sent to, leader], ...] (librdkafka's issue 4976, see
  `Delegations`)}. An acknowledged
  record's offset is null where librdkafka acknowledged it implicitly (its
  request's answer was lost, and a later request of the partition was taken).
  These clients do not re-bootstrap (`metadata.recovery.strategy` none; why: in
  `chaos()`).
  With RDK_DEBUG set (librdkafka `debug` contexts), every client's debug log goes
  to the file RDK_DEBUG_FILE (default `librdkafka-debug.log`).

Exits non-zero, saying why, on anything else.
"""

import json
import logging
import os
import re
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import fail, read_by_group

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


def cooperative():
    topic = f"{PREFIX}-coop"
    admin = AdminClient(CONF)
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])[
        topic
    ].result(timeout=30)
    producer = Producer({**CONF, "enable.idempotence": True, "acks": "all"})
    records = 1200
    for i in range(records):
        producer.produce(topic, key=f"k{i % KEYS}".encode(), value=f"{i}".encode())
        producer.poll(0)
    if producer.flush(30) != 0:
        fail("records left unsent after 30 s")

    lock = threading.Lock()
    seen, duplicates = set(), [0]
    events = {"a": [], "b": []}

    def member(name):
        def assigned(_c, partitions):
            events[name].append(("assign", len(partitions)))

        def revoked(c, partitions):
            events[name].append(("revoke", len(partitions)))
            if partitions:
                # A slow hand-over (an application flushing its work first): the
                # partitions must not reach the other member before the commit.
                time.sleep(1.5)
                try:
                    c.commit(asynchronous=False)
                except KafkaException as e:
                    # Nothing read since the last commit: nothing to commit.
                    if e.args[0].code() != KafkaError._NO_OFFSET:
                        raise

        consumer = Consumer(
            {
                **CONF,
                "group.id": f"{PREFIX}-coop",
                "partition.assignment.strategy": "cooperative-sticky",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 300,
            }
        )
        consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked)
        return consumer

    def poll(consumer):
        msg = consumer.poll(0.1)
        if msg is not None:
            if msg.error():
                fail(f"consumer error: {msg.error()}")
            value = int(msg.value().decode())
            with lock:
                if value in seen:
                    duplicates[0] += 1
                seen.add(value)

    def held(consumer):
        return {tp.partition for tp in consumer.assignment()}

    def until(what, check, consumer):
        deadline = time.time() + 60
        while not check():
            if time.time() > deadline:
                fail(f"{what} not within 60 s: {events}")
            poll(consumer)

    # A reads everything and commits nothing yet.
    a = member("a")
    until("A reading every record", lambda: len(seen) >= records, a)
    # B joins, polling on its own thread as an application's consumer would.
    b = member("b")
    b_stop = threading.Event()
    b_held = []

    def run_b():
        while not b_stop.is_set():
            poll(b)
        b_held.extend(held(b))
        b.close()

    b_thread = threading.Thread(target=run_b)
    b_thread.start()
    until(
        "A giving B its share",
        lambda: events["b"] and events["b"][-1][1] > 0 and len(held(a)) < 6,
        a,
    )
    # Time for B to read anything it was (wrongly) started on.
    settle = time.time() + 3
    while time.time() < settle:
        poll(a)
    a_share = held(a)
    b_stop.set()
    b_thread.join(30)
    until("A holding all six again", lambda: len(held(a)) == 6, a)
    # Before A's own close, which gives up everything.
    a_events = list(events["a"])
    a.close()
    return {
        "a_events": a_events,
        "split": [len(a_share), len(b_held)],
        "overlap": bool(a_share & set(b_held)),
        "consumed": len(seen),
        "duplicates": duplicates[0],
        "records": records,
    }


def login():
    admin = AdminClient(CONF)
    try:
        admin.list_topics(timeout=8)
        return {"result": "ok"}
    except KafkaException as e:
        return {"result": e.args[0].name()}


def admin_tools():
    from confluent_kafka.admin import ConfigResource, OffsetSpec, ResourceType

    admin = AdminClient(CONF)
    cluster = admin.describe_cluster(request_timeout=10).result(timeout=30)
    topic = f"{PREFIX}-conf"
    created = NewTopic(topic, num_partitions=1, replication_factor=1,
                       config={"retention.ms": "3600000"})
    admin.create_topics([created])[topic].result(timeout=30)
    replacing = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.ms": "600000"})
    for future in admin.alter_configs([replacing]).values():
        future.result(timeout=30)
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    (configs,) = [future.result(timeout=30) for future in described.values()]
    # Three records whose timestamps do not rise: the max-timestamp lookup finds
    # the second.
    now = int(time.time() * 1000)
    producer = Producer({**CONF, "acks": "all"})
    for i, delta in enumerate([0, 5000, 3000]):
        producer.produce(topic, value=f"{i}".encode(), partition=0, timestamp=now + delta)
    if producer.flush(30) != 0:
        fail("records not delivered")
    spec = {TopicPartition(topic, 0): OffsetSpec.max_timestamp()}
    (found,) = [future.result(timeout=30) for future in admin.list_offsets(spec).values()]
    return {
        "cluster_id": cluster.cluster_id,
        "controller": cluster.controller.id,
        "nodes": [[n.id, n.host, n.port] for n in cluster.nodes],
        "own": {name: e.value for name, e in configs.items() if not e.is_default},
        "max_timestamp": [found.offset, found.timestamp - now],
    }


def failover():
    consumer = Consumer({**CONF, "group.id": f"{PREFIX}-unused", "enable.auto.commit": False,
                         "auto.offset.reset": "error", "topic.metadata.refresh.interval.ms": 500})
    consumer.assign([TopicPartition(PREFIX, 0, 0)])
    offsets = []
    deadline = time.time() + 90
    while len(offsets) < 15:
        if time.time() > deadline:
            fail(f"only offsets {offsets} read")
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            fail(f"consumer error: {msg.error()}")
        offsets.append(msg.offset())
        if len(offsets) == 10:
            print("ready", flush=True)
    consumer.close()
    return {"offsets": offsets}


class Delegations(logging.Handler):
    """Where librdkafka sends each partition of `topic`, and who leads it, from its
    `topic` debug lines (a producer's `logger`): for telling, when records stay
    unsent, whether librdkafka is stuck sending a partition to a broker that no
    longer leads it while the metadata it was given names the leader. That is
    librdkafka's issue 4976 (fix proposed in its pull request 5593): a second
    leader update, naming the broker a partition is moving away from, arriving
    before the move is done, leaves the partition on the new broker with the
    leader id of the old; every later update then finds the leader "unchanged,
    not migrating away from preferred replica", and each produce gets
    NOT_LEADER_OR_FOLLOWER for good. Two Metadata answers a broker gives a
    moment apart, its leadership changing in between, are enough."""

    def __init__(self, topic, echo):
        super().__init__()
        self.topic, self.echo = re.escape(topic), echo
        self.sending_to, self.leader, self.kept = {}, {}, set()

    def emit(self, record):
        line = record.getMessage()
        if self.echo:
            print(line, file=sys.stderr)
        t = self.topic
        if m := re.search(rf": {t} \[(\d+)\]: delegate to broker \S+/(\d+) ", line):
            self.sending_to[int(m[1])] = int(m[2])
            self.kept.discard(int(m[1]))
        elif m := re.search(rf"Topic {t} \[(\d+)\] Leader (-?\d+)", line):
            self.leader[int(m[1])] = int(m[2])
        elif m := re.search(rf"Topic {t} \[(\d+)\]: leader (\d+) unchanged, not migrating", line):
            self.kept.add(int(m[1]))

    def stuck(self):
        """Partitions sent to a broker other than the leader librdkafka was told,
        and kept there: [[partition, sending to, leader], ...]."""
        return sorted([p, self.sending_to[p], self.leader.get(p)] for p in self.kept
                      if self.sending_to.get(p) != self.leader.get(p))


def chaos():
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    lock = threading.Lock()
    acknowledged, failed, read = [], {}, set()
    commit_errors, consumer_errors, fatal = {}, {}, []
    chaos_conf = {}
    if os.environ.get("RDK_DEBUG"):
        # librdkafka logs to stderr from its own threads: even while a call blocks.
        log = os.open(os.environ.get("RDK_DEBUG_FILE", "librdkafka-debug.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 2)
        chaos_conf = {"debug": os.environ["RDK_DEBUG"]}
    # librdkafka 2.10+ re-bootstraps (forgets the brokers it learned and starts
    # again from bootstrap.servers) once every broker it is connected to is down,
    # as two killed at once are here; under 2.16.1 a consumer then hung for good
    # now and then (its log silent from that moment, close() never returning).
    # Brokers come back where they were, so these clients reconnect instead.
    chaos_conf["metadata.recovery.strategy"] = "none"

    def count(into, err):
        with lock:
            into[str(err)] = into.get(str(err), 0) + 1

    def delivered(err, msg):
        if err is not None:
            count(failed, err)
            if err.fatal():
                fatal.append(str(err))
        else:
            i = int(msg.value().decode())
            with lock:
                acknowledged.append([i, msg.partition(), msg.offset()])

    reading = threading.Event()

    def member(seen_by):
        def assigned(_consumer, partitions):
            seen_by["assigned"].append(sorted(tp.partition for tp in partitions))

        consumer = Consumer({**CONF, **chaos_conf, "group.id": f"{PREFIX}-readers",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "session.timeout.ms": 6000})
        consumer.subscribe([PREFIX], on_assign=assigned)
        while not reading.is_set():
            messages = consumer.consume(500, 0.1)
            values = []
            for msg in messages:
                if msg.error():
                    count(consumer_errors, msg.error())
                else:
                    values.append(int(msg.value().decode()))
            with lock:
                read.update(values)
                seen_by["read"] += len(values)
            if values:
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as e:
                    count(commit_errors, e.args[0].name())
        consumer.close()

    # What each member was given and read, for a failure to tell.
    seen_by = [{"assigned": [], "read": 0} for _ in range(2)]
    members = [threading.Thread(target=member, args=(s,), daemon=True) for s in seen_by]
    for m in members:
        m.start()
    # The producer's `topic` debug lines come to `delegations` (on its polls), and
    # to the debug log too under RDK_DEBUG.
    delegations = Delegations(PREFIX, echo="debug" in chaos_conf)
    logger = logging.getLogger("librdkafka-producer")
    logger.addHandler(delegations)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    debug = ",".join(filter(None, [chaos_conf.get("debug"), "topic"]))
    producer = Producer({**CONF, **chaos_conf, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 2, "batch.size": 4096, "debug": debug, "log_level": 7,
                         "logger": logger,
                         "error_cb": lambda err: fatal.append(str(err)) if err.fatal() else None})
    i = 0
    while not stop.is_set() and not fatal:
        try:
            producer.produce(PREFIX, key=f"k{i % 97}".encode(), value=f"{i:08}".encode(),
                             on_delivery=delivered)
        except BufferError:
            producer.poll(0.1)
            continue
        except KafkaException as e:
            fatal.append(str(e))
            break
        i += 1
        producer.poll(0)
        if i == 200:
            print("ready", flush=True)
        if i % 20 == 0:
            time.sleep(0.002)
    if fatal:
        # A producer in a fatal state fails what it holds; its reports come on polls.
        for _ in range(20):
            producer.poll(0.1)
        left = len(producer)
    else:
        # Two minutes to send what it holds; half a minute if it stays stuck.
        left, deadline, stuck_since = len(producer), time.monotonic() + 120, None
        while left and time.monotonic() < deadline:
            left = producer.flush(5)
            if not (left and delegations.stuck()):
                stuck_since = None
            elif time.monotonic() - (stuck_since := stuck_since or time.monotonic()) > 30:
                break
    unread = read_by_group(acknowledged, read, lock, reading, members)
    return {"acknowledged": acknowledged, "failed": failed, "unsent": left, "unread": unread,
            "commit_errors": commit_errors, "consumer_errors": consumer_errors,
            "members": seen_by, "fatal": fatal[0] if fatal else None,
            "stuck": delegations.stuck()}


ACTIONS = {"roundtrip": roundtrip, "cooperative": cooperative, "login": login,
           "admin": admin_tools, "failover": failover, "chaos": chaos}
if ACTION not in ACTIONS:
    fail(f"unknown action {ACTION}")
print(json.dumps(ACTIONS[ACTION]()))
