// KafkaJS, the pure-JavaScript Kafka client of most Node.js applications, against
// Meridian's Kafka listener. Run by tests/it/kafka_js.rs as
//
//     node kafkajs.js BOOTSTRAP PREFIX [chaos]
//
// with NODE_PATH naming the node_modules that .ci/run installs kafkajs into.
// BOOTSTRAP is a comma-separated list of listeners. Without `chaos`, the
// admin client creates topic PREFIX-orders (3 partitions); an idempotent producer
// sends 600 keyed records (acks=all) in six sends, gzip and uncompressed by turns;
// a consumer of group PREFIX-group (KafkaJS's default RoundRobinAssigner) reads
// them all, committing as it goes, and leaves. Then the admin client's tools: the
// group's offsets and state; for group PREFIX-tools setOffsets (partition 0 to 5),
// resetOffsets (to the earliest) and in the end deleteGroups; createPartitions (to
// 4), deleteTopicRecords (partition 0 before 3), describeConfigs of topic
// PREFIX-kept created with retention.ms; alterConfigs (Kafka's legacy AlterConfigs,
// which replaces a topic's settings) giving it segment.ms alone, then once with a
// value the broker refuses. Prints {"produced": N, "consumed": N, "duplicates": N,
// "keys_in_order": bool, "committed": {partition: offset}, "described_state",
// "after_set": {…}, "after_reset": {…}, "partitions": N, "low_of_0": N,
// "retention_ms", "replaced": {name: [value, isDefault]}, "refused": error type,
// "listed": {group: bool}}. Exits non-zero, saying why, on anything else.
//
// `chaos` (tests/it/cluster.rs, with the region's brokers killed and restarted
// meanwhile): six idempotent producers, one a partition of the existing topic
// PREFIX (six partitions), send records numbered 6n + partition, keyed
// k(number % 96) (so each key's records share a partition), in sends of 8, one
// at a time (acks=all); after a send fails, its producer is replaced. A group
// of two consumers (PREFIX-readers, committing as KafkaJS does by default, a
// Kafka instance each) reads them. Prints `ready` once 200 records are
// acknowledged; on a line on stdin stops sending, waits up to 90 s for the
// group to read every acknowledged record, and prints {"acknowledged":
// [[record, partition, offset]], "failed": {error: sends}, "unread": N,
// "crashes": [{"error", "restart": bool}], "members": [{"assigned":
// [[partition]], "read": N}]}.

const { Kafka, logLevel, CompressionTypes, ConfigResourceTypes } = require("kafkajs");

const [bootstrap, prefix, action] = process.argv.slice(2);
const options = {
  clientId: "kafkajs-test",
  brokers: bootstrap.split(","),
  logLevel: logLevel.ERROR,
};
const kafka = new Kafka(options);
const RECORDS = 600;
const KEYS = 40;

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  const topic = `${prefix}-orders`;
  await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true });

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  for (let send = 0; send < 6; send++) {
    const messages = [];
    for (let i = send * 100; i < (send + 1) * 100; i++) {
      messages.push({ key: `k${i % KEYS}`, value: `${i}` });
    }
    const compression = send % 2 ? CompressionTypes.GZIP : CompressionTypes.None;
    await producer.send({ topic, acks: -1, messages, compression });
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `${prefix}-group` });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const seen = new Set();
  const lastByKey = new Map();
  let duplicates = 0;
  let inOrder = true;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`read ${seen.size} of ${RECORDS} records in 60 s`)),
      60000,
    );
    consumer
      .run({
        eachMessage: async ({ message }) => {
          const i = Number(message.value.toString());
          if (seen.has(i)) duplicates++;
          seen.add(i);
          const key = message.key.toString();
          if ((lastByKey.get(key) ?? -1) >= i) inOrder = false;
          lastByKey.set(key, i);
          if (seen.size >= RECORDS) {
            clearTimeout(timer);
            resolve();
          }
        },
      })
      .catch(reject);
  });
  // Leaving commits what eachMessage resolved.
  await consumer.disconnect();

  const groupId = `${prefix}-group`;
  const offsetsOf = async (group) => {
    const [offsets] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
    const byPartition = {};
    for (const p of offsets.partitions) byPartition[p.partition] = Number(p.offset);
    return byPartition;
  };
  const committed = await offsetsOf(groupId);
  const [described] = (await admin.describeGroups([groupId])).groups;

  // The admin client's group and topic tools, on a group of their own.
  const tools = `${prefix}-tools`;
  await admin.setOffsets({ groupId: tools, topic, partitions: [{ partition: 0, offset: "5" }] });
  const afterSet = await offsetsOf(tools);
  await admin.resetOffsets({ groupId: tools, topic, earliest: true });
  const afterReset = await offsetsOf(tools);
  await admin.createPartitions({ topicPartitions: [{ topic, count: 4 }] });
  await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: "3" }] });
  const low = (await admin.fetchTopicOffsets(topic)).find((p) => p.partition === 0).low;
  await admin.createTopics({
    topics: [{ topic: `${prefix}-kept`, configEntries: [{ name: "retention.ms", value: "3600000" }] }],
  });
  const { resources } = await admin.describeConfigs({
    resources: [{ type: ConfigResourceTypes.TOPIC, name: `${prefix}-kept`, configNames: ["retention.ms"] }],
    includeSynonyms: false,
  });
  const kept = { type: ConfigResourceTypes.TOPIC, name: `${prefix}-kept` };
  await admin.alterConfigs({
    resources: [{ ...kept, configEntries: [{ name: "segment.ms", value: "600000" }] }],
  });
  const replaced = {};
  const after = await admin.describeConfigs({
    resources: [{ ...kept, configNames: ["retention.ms", "segment.ms"] }],
    includeSynonyms: false,
  });
  for (const c of after.resources[0].configEntries) {
    replaced[c.configName] = [c.configValue, c.isDefault];
  }
  let refused = null;
  try {
    await admin.alterConfigs({
      resources: [{ ...kept, configEntries: [{ name: "retention.ms", value: "soon" }] }],
    });
  } catch (error) {
    refused = error.type || String(error);
  }
  await admin.deleteGroups([tools]);
  const listed = (await admin.listGroups()).groups.map((g) => g.groupId);
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
  await admin.disconnect();
  return {
    produced: RECORDS,
    consumed: seen.size,
    duplicates,
    keys_in_order: inOrder,
    committed,
    described_state: described.state,
    after_reset: afterReset,
    after_set: afterSet,
    partitions: metadata.topics[0].partitions.length,
    low_of_0: Number(low),
    retention_ms: resources[0].configEntries[0].configValue,
    replaced,
    refused,
    listed: { [groupId]: listed.includes(groupId), [tools]: listed.includes(tools) },
  };
}

async function chaos() {
  const topic = prefix;
  const PARTITIONS = 6;
  const SEND = 8;
  let stop = false;
  process.stdin.once("data", () => {
    stop = true;
  });
  const read = new Set();
  const crashes = [];
  const members = [];
  const consumers = [];
  for (let m = 0; m < 2; m++) {
    const seenBy = { assigned: [], read: 0 };
    members.push(seenBy);
    // A Kafka instance each, as two applications would have: KafkaJS 2.2.4
    // shares one cache of a group's committed offsets among the consumers of an
    // instance, and a member given no partitions (as a member joining a group is
    // on Meridian until others have given theirs up, and on Kafka when the group
    // has more members than partitions) empties it, and the other member's next
    // commit fails (`Cannot read properties of undefined`) and stops it.
    const consumer = new Kafka({ ...options, clientId: `kafkajs-reader-${m}` }).consumer({
      groupId: `${prefix}-readers`,
      sessionTimeout: 6000,
      heartbeatInterval: 1000,
    });
    consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
      seenBy.assigned.push(payload.memberAssignment[topic] || []);
    });
    consumer.on(consumer.events.CRASH, ({ payload }) => {
      const cause = payload.error.cause ? ` (${payload.error.cause.stack})` : "";
      crashes.push({ error: `${payload.error.stack}${cause}`, restart: payload.restart });
    });
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message }) => {
        read.add(Number(message.value.toString()));
        seenBy.read++;
      },
    });
    consumers.push(consumer);
  }

  const acknowledged = [];
  const failed = {};
  let ready = false;
  // An idempotent producer, once it has its producer id (which takes a broker).
  const connected = async () => {
    for (;;) {
      const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
      try {
        await producer.connect();
        return producer;
      } catch (error) {
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  };
  // One producer a partition, each sending that partition's records (number
  // 6n + partition, key k(number % 96)) in sends of 8, one at a time. A send
  // names one partition: KafkaJS 2.2.4 keeps a send's answers by broker across
  // its retries, so a send to partitions of several leaders, retried after one
  // of them moved to a broker that had answered, resolves without having
  // written that partition's records (seen here: acknowledged, with no offset,
  // and not in the log).
  const sending = async (partition) => {
    let producer = await connected();
    for (let n = 0; !stop; n += SEND) {
      const messages = [];
      for (let i = n * PARTITIONS + partition; i < (n + SEND) * PARTITIONS; i += PARTITIONS) {
        messages.push({ key: `k${i % 96}`, value: `${i}`, partition });
      }
      try {
        const [answer] = await producer.send({ topic, acks: -1, messages });
        const base = Number(answer.baseOffset);
        messages.forEach((m, k) => acknowledged.push([Number(m.value), partition, base + k]));
      } catch (error) {
        const cause = error.cause && (error.cause.type || error.cause.name);
        const why = cause ? `${error.name}: ${cause}` : error.name;
        failed[why] = (failed[why] ?? 0) + 1;
        // Whether the send was written is not known, and KafkaJS takes its
        // sequence numbers back: the next send would reuse them, and a broker
        // would take it for the failed one's retry and drop it (Kafka's brokers
        // as well). A new producer (a new producer id) starts afresh.
        await producer.disconnect().catch(() => {});
        producer = await connected();
      }
      if (!ready && acknowledged.length >= 200) {
        ready = true;
        console.log("ready");
      }
    }
    await producer.disconnect();
  };
  await Promise.all(Array.from({ length: PARTITIONS }, (_, p) => sending(p)));
  const deadline = Date.now() + 90000;
  let unread = acknowledged.filter(([i]) => !read.has(i)).length;
  while (unread > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    unread = acknowledged.filter(([i]) => !read.has(i)).length;
  }
  // KafkaJS 2.2.4 sends a stopping member's LeaveGroup once, to the
  // coordinator it last knew: one that moved since (its broker killed) answers
  // NOT_COORDINATOR, as Kafka's do, and disconnect() throws it. The member's
  // session ends it anyway; counted by kind, and the test allows retriable ones.
  const leaveErrors = {};
  for (const consumer of consumers) {
    await consumer.disconnect().catch((error) => {
      const why = `${error.type || error.name}${error.retriable ? "" : " (not retriable)"}`;
      leaveErrors[why] = (leaveErrors[why] ?? 0) + 1;
    });
  }
  return { acknowledged, failed, unread, crashes, members, leaveErrors };
}

(action === "chaos" ? chaos() : main()).then(
  // Exits once the line is out: stdout to a pipe is written asynchronously.
  (summary) => process.stdout.write(`${JSON.stringify(summary)}\n`, () => process.exit(0)),
  (error) => {
    console.error(`kafkajs.js: ${error.stack || error}`);
    process.exit(1);
  },
);
