// KafkaJS, the pure-JavaScript Kafka client of most Node.js applications, against
// Meridian's Kafka listener. Run by tests/it/kafka_js.rs as
//
//     node kafkajs.js BOOTSTRAP PREFIX
//
// with NODE_PATH naming the node_modules that .ci/run installs kafkajs into. The
// admin client creates topic PREFIX-orders (3 partitions); an idempotent producer
// sends 600 keyed records (acks=all) in six sends, gzip and uncompressed by turns;
// a consumer of group PREFIX-group (KafkaJS's default RoundRobinAssigner) reads
// them all, committing as it goes, and leaves; then the admin client reads the
// group's offsets and the topic's metadata. Prints {"produced": N, "consumed": N,
// "duplicates": N, "keys_in_order": bool, "committed": {partition: offset},
// "partitions": N}. Exits non-zero, saying why, on anything else.

const { Kafka, logLevel, CompressionTypes } = require("kafkajs");

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

  const [offsets] = await admin.fetchOffsets({ groupId: `${prefix}-group`, topics: [topic] });
  const committed = {};
  for (const p of offsets.partitions) committed[p.partition] = Number(p.offset);
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
  await admin.disconnect();
  return {
    produced: RECORDS,
    consumed: seen.size,
    duplicates,
    keys_in_order: inOrder,
    committed,
    partitions: metadata.topics[0].partitions.length,
  };
}

main().then(
  (summary) => console.log(JSON.stringify(summary)),
  (error) => {
    console.error(`kafkajs.js: ${error.stack || error}`);
    process.exit(1);
  },
);
