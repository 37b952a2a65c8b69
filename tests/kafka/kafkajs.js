// KafkaJS, the pure-JavaScript Kafka client of most Node.js applications, against
// Meridian's Kafka listener. Run by tests/it/kafka_js.rs as
//
//     node kafkajs.js BOOTSTRAP PREFIX
//
// with NODE_PATH naming the node_modules that .ci/run installs kafkajs into. The
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

const { Kafka, logLevel, CompressionTypes, ConfigResourceTypes } = require("kafkajs");

const [bootstrap, prefix] = process.argv.slice(2);
const kafka = new Kafka({
  clientId: "kafkajs-test",
  brokers: [bootstrap],
  logLevel: logLevel.ERROR,
});
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

main().then(
  (summary) => console.log(JSON.stringify(summary)),
  (error) => {
    console.error(`kafkajs.js: ${error.stack || error}`);
    process.exit(1);
  },
);
