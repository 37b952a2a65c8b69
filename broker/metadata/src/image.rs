//! Metadata records and the image they build.
//!
//! The controller decides; what it decided travels through the Raft log as
//! [`MetadataRecord`]s; every broker applies the committed records, in log order, to
//! its [`MetadataImage`]. Applying is deterministic (no clock, no randomness, no I/O),
//! so every broker that applied the same prefix holds the same image.
//!
//! Records and the image are serialized (Raft log, snapshots, the Raft RPC payloads):
//! they are a compatibility promise. Add fields with `#[serde(default)]`.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_wire::TopicId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub type BrokerId = u32;

/// One broker as registered with the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub id: BrokerId,
    /// Unique per process start: a new one means the broker restarted.
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Fenced brokers lead nothing and are not in any ISR the controller grows.
    pub fenced: bool,
    /// In controlled shutdown: stays fenced until a new incarnation registers.
    #[serde(default)]
    pub shutting_down: bool,
    /// Where Kafka clients reach the broker (its `kafka_listen`), if it has a Kafka
    /// listener.
    #[serde(default)]
    pub kafka: Option<Endpoint>,
}

/// A host and port clients connect to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// The replication state of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// `None`: offline (no eligible replica).
    pub leader: Option<BrokerId>,
    pub leader_epoch: i32,
    /// Bumped on every change (leader, ISR, replicas).
    pub partition_epoch: i32,
    pub isr: Vec<BrokerId>,
    pub replicas: Vec<BrokerId>,
    /// A reassignment under way: the replicas it ends with. `replicas` then holds the
    /// original replicas followed by `adding_replicas`.
    #[serde(default)]
    pub reassigning_to: Option<Vec<BrokerId>>,
    /// Replicas a reassignment adds: they copy the log from the leader.
    #[serde(default)]
    pub adding_replicas: Vec<BrokerId>,
    /// Replicas a reassignment drops once every target replica is in sync.
    #[serde(default)]
    pub removing_replicas: Vec<BrokerId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    /// Explicit topic settings (`retention.ms`, `unclean.leader.election.enable`, …).
    pub configs: BTreeMap<String, String>,
    pub replication_factor: u16,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionState>,
    /// The incarnation: the Raft log index of the record that created the topic (set
    /// when the record is applied, [`MetadataImage::apply_at`]; 0 in a record and in
    /// images from before it existed). A topic deleted and created again under the
    /// same name has a higher one, so a broker tells its old local copy from the new
    /// topic.
    #[serde(default)]
    pub created_at: u64,
    /// Given by the controller when it created the topic; [`TopicId::NONE`] in
    /// records from before topics had IDs ([`TopicImage::id`] then derives one).
    #[serde(
        default,
        with = "topic_id_text",
        skip_serializing_if = "TopicId::is_none"
    )]
    pub id: TopicId,
}

impl TopicImage {
    /// The topic's ID: the one the controller gave it, or, for a topic created
    /// before topics had IDs, one derived from its name and incarnation, the same
    /// on every broker and across restarts.
    pub fn id(&self) -> TopicId {
        if self.id.is_none() {
            derived_topic_id(&self.name, self.created_at)
        } else {
            self.id
        }
    }

    /// Whether the topic allows electing a leader from outside the ISR.
    pub fn unclean_leader_election(&self) -> bool {
        self.configs
            .get(UNCLEAN_LEADER_ELECTION_KEY)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// An ID for a topic from before topics had IDs: a 128-bit FNV-1a hash of its name
/// and incarnation, shaped as [`TopicId::from_random`] shapes random bytes.
fn derived_topic_id(name: &str, created_at: u64) -> TopicId {
    const OFFSET_BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut hash = OFFSET_BASIS;
    let input = name.bytes().chain([0]).chain(created_at.to_le_bytes());
    for byte in input {
        hash = (hash ^ u128::from(byte)).wrapping_mul(PRIME);
    }
    let mut bytes = hash.to_be_bytes();
    loop {
        if let Some(id) = TopicId::from_random(bytes) {
            return id;
        }
        // A leading `-` in its text: move off it, deterministically.
        bytes[0] ^= 0x80;
    }
}

/// A [`TopicId`] in JSON: its text (22 characters of URL-safe base64), as Kafka's
/// tools print it. For `#[serde(with = "topic_id_text")]`.
pub mod topic_id_text {
    use super::*;

    pub fn serialize<S: Serializer>(id: &TopicId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TopicId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A plugin deployed to the cluster: every broker stores, compiles and serves this
/// module under the name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginImage {
    pub version: String,
    /// `filter`, `transform` or `partitioner`, as the broker that took the deploy
    /// found it.
    pub kind: String,
    /// Hex SHA-256 of `module`.
    pub sha256: String,
    /// The module, hex in the JSON log and snapshots; shared, so copies of the
    /// image (one per applied batch of records) do not copy it.
    #[serde(with = "hex_bytes")]
    pub module: Arc<Vec<u8>>,
}

/// One plugin in a topic's produce chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentImage {
    pub plugin: String,
    pub params: Vec<(String, String)>,
    /// 0: the broker default.
    pub batch_time_max_ms: u32,
    /// 0: the broker default.
    pub memory_max_bytes: u64,
    /// `reject`, `skip` or `dead-letter:TOPIC`.
    pub on_failure: String,
}

mod hex_bytes {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Arc<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        use std::fmt::Write;
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes.iter() {
            write!(out, "{b:02x}").expect("writing to a String");
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<u8>>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd hex length"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&text[i..i + 2], 16)
                    .map_err(|e| serde::de::Error::custom(format!("hex: {e}")))
            })
            .collect::<Result<Vec<u8>, _>>()
            .map(Arc::new)
    }
}

/// The topic setting that allows unclean leader election.
pub const UNCLEAN_LEADER_ELECTION_KEY: &str = "unclean.leader.election.enable";

/// A change to the metadata, as written to the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataRecord {
    /// A broker (re)registered: new incarnation or new address. It starts fenced
    /// unless `fenced` says otherwise.
    BrokerRegistered(BrokerRegistration),
    BrokerFenced {
        id: BrokerId,
    },
    BrokerUnfenced {
        id: BrokerId,
    },
    /// Controlled shutdown: fenced until it comes back as a new incarnation.
    BrokerShuttingDown {
        id: BrokerId,
    },
    /// Forgotten (`UnregisterBroker`): gone for good, holding no replicas. It
    /// registers again if it comes back.
    BrokerUnregistered {
        id: BrokerId,
    },
    TopicCreated(TopicImage),
    TopicDeleted {
        name: String,
    },
    PartitionChanged {
        topic: String,
        partition: u32,
        state: PartitionState,
    },
    /// A topic's explicit settings, all of them (not a difference): a setting
    /// missing here takes the broker default.
    TopicConfigsChanged {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Partitions added to a topic: `partitions` are numbered from `first`, which is
    /// the topic's partition count before them.
    PartitionsCreated {
        name: String,
        first: u32,
        partitions: Vec<PartitionState>,
    },
    /// A plugin deployed, or its module replaced.
    PluginDeployed {
        name: String,
        plugin: PluginImage,
    },
    PluginRemoved {
        name: String,
    },
    /// A topic's whole produce chain (empty: no plugins).
    AttachmentsChanged {
        topic: String,
        attachments: Vec<AttachmentImage>,
    },
}

/// Brokers, topics, partition assignments, leaders, ISRs and epochs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub brokers: BTreeMap<BrokerId, BrokerRegistration>,
    pub topics: BTreeMap<String, TopicImage>,
    /// Deployed plugins, by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginImage>,
    /// Each topic's produce chain, in order; topics without plugins are absent.
    #[serde(default)]
    pub attachments: BTreeMap<String, Vec<AttachmentImage>>,
}

impl MetadataImage {
    /// Applies a record committed at Raft log `index`: as [`MetadataImage::apply`],
    /// and a created topic takes `index` as its incarnation (`created_at`).
    pub fn apply_at(&mut self, record: &MetadataRecord, index: u64) {
        self.apply(record);
        if let MetadataRecord::TopicCreated(created) = record {
            if let Some(topic) = self.topics.get_mut(&created.name) {
                topic.created_at = index;
            }
        }
    }

    /// Applies one committed record. Records that do not fit the image (a change to
    /// a topic deleted meanwhile) are ignored: the log is the truth, and a later
    /// record never depends on an ignored one.
    pub fn apply(&mut self, record: &MetadataRecord) {
        match record {
            MetadataRecord::BrokerRegistered(registration) => {
                self.brokers.insert(registration.id, registration.clone());
            }
            MetadataRecord::BrokerFenced { id } => {
                if let Some(b) = self.brokers.get_mut(id) {
                    b.fenced = true;
                }
            }
            MetadataRecord::BrokerUnfenced { id } => {
                if let Some(b) = self.brokers.get_mut(id) {
                    b.fenced = false;
                    b.shutting_down = false;
                }
            }
            MetadataRecord::BrokerShuttingDown { id } => {
                if let Some(b) = self.brokers.get_mut(id) {
                    b.fenced = true;
                    b.shutting_down = true;
                }
            }
            MetadataRecord::BrokerUnregistered { id } => {
                self.brokers.remove(id);
            }
            MetadataRecord::TopicCreated(topic) => {
                self.topics.insert(topic.name.clone(), topic.clone());
            }
            MetadataRecord::TopicDeleted { name } => {
                self.topics.remove(name);
                self.attachments.remove(name);
            }
            MetadataRecord::PartitionChanged {
                topic,
                partition,
                state,
            } => {
                if let Some(slot) = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                {
                    *slot = state.clone();
                }
            }
            MetadataRecord::TopicConfigsChanged { name, configs } => {
                if let Some(topic) = self.topics.get_mut(name) {
                    topic.configs = configs.clone();
                }
            }
            MetadataRecord::PartitionsCreated {
                name,
                first,
                partitions,
            } => {
                if let Some(topic) = self
                    .topics
                    .get_mut(name)
                    .filter(|t| t.partitions.len() == *first as usize)
                {
                    topic.partitions.extend(partitions.iter().cloned());
                }
            }
            MetadataRecord::PluginDeployed { name, plugin } => {
                self.plugins.insert(name.clone(), plugin.clone());
            }
            MetadataRecord::PluginRemoved { name } => {
                self.plugins.remove(name);
            }
            MetadataRecord::AttachmentsChanged { topic, attachments } => {
                if attachments.is_empty() || !self.topics.contains_key(topic) {
                    self.attachments.remove(topic);
                } else {
                    self.attachments.insert(topic.clone(), attachments.clone());
                }
            }
        }
    }

    /// The name of the topic with ID `id` ([`TopicImage::id`]), if one has it.
    pub fn topic_name_of(&self, id: TopicId) -> Option<String> {
        let topic = self.topics.values().find(|t| t.id() == id)?;
        Some(topic.name.clone())
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionState> {
        self.topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
    }

    /// Unfenced brokers, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: BrokerId) -> BrokerRegistration {
        BrokerRegistration {
            id,
            incarnation: 7,
            host: "127.0.0.1".into(),
            port: 9100 + id as u16,
            rack: None,
            fenced: true,
            shutting_down: false,
            kafka: None,
        }
    }

    #[test]
    fn a_registration_from_before_kafka_listeners_loads_and_one_with_it_round_trips() {
        let old = r#"{"type":"broker_registered","id":2,"incarnation":7,"host":"127.0.0.1","port":9102,"rack":null,"fenced":false}"#;
        let MetadataRecord::BrokerRegistered(registration) =
            serde_json::from_str::<MetadataRecord>(old).unwrap()
        else {
            panic!("not a registration");
        };
        assert_eq!(registration.kafka, None);
        assert!(!registration.shutting_down);
        let mut with = broker(3);
        with.kafka = Some(Endpoint {
            host: "10.0.0.3".into(),
            port: 9092,
        });
        let record = MetadataRecord::BrokerRegistered(with.clone());
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<MetadataRecord>(&json).unwrap(),
            record
        );
        let mut image = MetadataImage::default();
        image.apply(&record);
        assert_eq!(image.brokers[&3].kafka, with.kafka);
    }

    /// A topic created before topics had IDs has none in its record; every broker
    /// derives the same one from its name and incarnation (another incarnation,
    /// another ID). One given by the controller is kept as given.
    #[test]
    fn a_topic_from_before_ids_gets_the_same_derived_id_everywhere() {
        let old = r#"{"type":"topic_created","name":"orders","configs":{},"replication_factor":1,"partitions":[]}"#;
        let record: MetadataRecord = serde_json::from_str(old).unwrap();
        let at = |index| {
            let mut image = MetadataImage::default();
            image.apply_at(&record, index);
            image.topics["orders"].clone()
        };
        assert!(at(7).id.is_none());
        assert!(!at(7).id().is_none());
        assert_eq!(at(7).id(), at(7).id(), "the same on every broker");
        assert_ne!(at(7).id(), at(8).id(), "another incarnation, another ID");
        let mut other = at(7);
        other.name = "payments".into();
        assert_ne!(other.id(), at(7).id());
        assert!(!at(7).id().to_string().starts_with('-'));
        // Written to a snapshot, the image keeps no derived ID: it derives it again.
        let json = serde_json::to_string(&at(7)).unwrap();
        assert!(!json.contains("\"id\""), "{json}");

        let given = TopicId::from_random([5; 16]).unwrap();
        let mut with_id = at(7);
        with_id.id = given;
        assert_eq!(with_id.id(), given);
        let json = serde_json::to_string(&with_id).unwrap();
        assert!(json.contains(&format!("\"id\":\"{given}\"")), "{json}");
        let back: TopicImage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, with_id);
        assert!(
            serde_json::from_str::<TopicImage>(&json.replace(&given.to_string(), "x")).is_err()
        );
    }

    #[test]
    fn plugin_records_build_the_image_and_round_trip() {
        let mut image = MetadataImage::default();
        image.apply(&MetadataRecord::TopicCreated(TopicImage {
            name: "orders".into(),
            configs: BTreeMap::new(),
            replication_factor: 1,
            partitions: Vec::new(),
            created_at: 0,
            id: TopicId::NONE,
        }));
        let plugin = PluginImage {
            version: "1.0.0".into(),
            kind: "filter".into(),
            sha256: "ab".into(),
            module: Arc::new(vec![0, 97, 115, 109, 255]),
        };
        let attachment = AttachmentImage {
            plugin: "f".into(),
            params: vec![("where".into(), "a=1".into())],
            batch_time_max_ms: 0,
            memory_max_bytes: 0,
            on_failure: "reject".into(),
        };
        let records = [
            MetadataRecord::PluginDeployed {
                name: "f".into(),
                plugin: plugin.clone(),
            },
            MetadataRecord::AttachmentsChanged {
                topic: "orders".into(),
                attachments: vec![attachment.clone()],
            },
            // A chain for a topic that does not exist is not kept.
            MetadataRecord::AttachmentsChanged {
                topic: "ghost".into(),
                attachments: vec![attachment.clone()],
            },
        ];
        for record in &records {
            let json = serde_json::to_string(record).unwrap();
            assert_eq!(
                &serde_json::from_str::<MetadataRecord>(&json).unwrap(),
                record
            );
            image.apply(record);
        }
        assert!(serde_json::to_string(&records[0])
            .unwrap()
            .contains("\"0061736dff\""));
        assert_eq!(image.plugins["f"], plugin);
        assert_eq!(image.attachments["orders"], vec![attachment]);
        assert!(!image.attachments.contains_key("ghost"));
        let json = serde_json::to_string(&image).unwrap();
        assert_eq!(serde_json::from_str::<MetadataImage>(&json).unwrap(), image);
        // An image from before plugins existed still loads.
        let old = r#"{"brokers":{},"topics":{}}"#;
        assert!(serde_json::from_str::<MetadataImage>(old)
            .unwrap()
            .plugins
            .is_empty());

        image.apply(&MetadataRecord::TopicDeleted {
            name: "orders".into(),
        });
        assert!(image.attachments.is_empty(), "a deleted topic's chain goes");
        image.apply(&MetadataRecord::PluginRemoved { name: "f".into() });
        assert!(image.plugins.is_empty());
    }

    #[test]
    fn records_build_the_image_and_round_trip() {
        let state = PartitionState {
            leader: Some(1),
            leader_epoch: 0,
            partition_epoch: 0,
            isr: vec![1, 2],
            replicas: vec![1, 2],
            reassigning_to: None,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        };
        let records = [
            MetadataRecord::BrokerRegistered(broker(1)),
            MetadataRecord::BrokerRegistered(broker(2)),
            MetadataRecord::BrokerRegistered(broker(3)),
            MetadataRecord::BrokerUnregistered { id: 3 },
            MetadataRecord::BrokerUnfenced { id: 1 },
            MetadataRecord::BrokerUnfenced { id: 2 },
            MetadataRecord::TopicCreated(TopicImage {
                name: "t".into(),
                configs: [(UNCLEAN_LEADER_ELECTION_KEY.to_string(), "true".to_string())]
                    .into_iter()
                    .collect(),
                replication_factor: 2,
                partitions: vec![state.clone()],
                created_at: 0,
                id: TopicId::from_random([5; 16]).unwrap(),
            }),
            MetadataRecord::BrokerFenced { id: 1 },
            MetadataRecord::PartitionChanged {
                topic: "t".into(),
                partition: 0,
                state: PartitionState {
                    leader: Some(2),
                    leader_epoch: 1,
                    partition_epoch: 1,
                    isr: vec![2],
                    ..state.clone()
                },
            },
            // A change to a partition that does not exist is ignored.
            MetadataRecord::PartitionChanged {
                topic: "gone".into(),
                partition: 0,
                state: state.clone(),
            },
            MetadataRecord::TopicConfigsChanged {
                name: "t".into(),
                configs: [("retention.ms".to_string(), "1000".to_string())]
                    .into_iter()
                    .collect(),
            },
            MetadataRecord::PartitionsCreated {
                name: "t".into(),
                first: 1,
                partitions: vec![state.clone(), state.clone()],
            },
            // Numbered from a count the topic does not have: ignored.
            MetadataRecord::PartitionsCreated {
                name: "t".into(),
                first: 1,
                partitions: vec![state],
            },
        ];
        let mut image = MetadataImage::default();
        for (index, r) in records.iter().enumerate() {
            let json = serde_json::to_string(r).unwrap();
            let back: MetadataRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, r);
            image.apply_at(r, 100 + index as u64);
        }
        // The creating record's index is the topic's incarnation.
        assert_eq!(image.topics["t"].created_at, 106);
        assert_eq!(image.brokers.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert!(image.brokers[&1].fenced);
        assert!(!image.brokers[&2].fenced);
        assert_eq!(
            image.live_brokers().map(|b| b.id).collect::<Vec<_>>(),
            vec![2]
        );
        let p = image.partition("t", 0).unwrap();
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (Some(2), 1, vec![2])
        );
        // The configs were replaced as a whole.
        assert!(!image.topics["t"].unclean_leader_election());
        assert_eq!(image.topics["t"].configs["retention.ms"], "1000");
        assert_eq!(image.topics["t"].partitions.len(), 3);
        let json = serde_json::to_vec(&image).unwrap();
        assert_eq!(
            serde_json::from_slice::<MetadataImage>(&json).unwrap(),
            image
        );
        image.apply(&MetadataRecord::TopicDeleted { name: "t".into() });
        assert!(image.topics.is_empty());
    }
}
