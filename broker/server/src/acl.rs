//! Authorization (`acl_file`): which client may do what, by the common name of the
//! certificate it presented (mutual TLS, `tls_client_ca`).
//!
//! Pure: the rules are parsed from the file's text, and `check` turns a decoded
//! request into what the dispatcher does with it (serve it, serve it without the
//! topics the client may not touch and answer those with an error, or refuse it);
//! `After` then finishes the response. No I/O here besides [`Acl::load`].
//!
//! The model is Kafka's, without hosts: a rule allows (or denies) principals
//! operations on resources (topics and groups by name, exact or by prefix, and the
//! cluster). A deny wins over any allow; with no rule that allows it, a request is
//! refused. Read, write, delete and alter of a topic (read and delete of a group)
//! imply describing it; creating topics on the cluster allows creating any topic.
//! Super users, and peers presenting this broker's own certificate (its cluster's
//! brokers), may do everything.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use meridian_wire::messages::*;
use meridian_wire::{ErrorCode, TopicId};
use serde::Deserialize;

/// What a request does to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    /// What brokers do to each other: replica fetches, Raft, heartbeats, ISR changes.
    ClusterAction,
}

impl Operation {
    const ALL: [Operation; 7] = [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::ClusterAction,
    ];

    /// By its name in the file (`read`, `cluster_action`).
    pub fn parse(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::ClusterAction => "cluster_action",
        }
    }

    fn applies_to(self, kind: Kind) -> bool {
        use Operation::*;
        match kind {
            Kind::Topic => matches!(self, Read | Write | Create | Delete | Alter | Describe),
            Kind::Group => matches!(self, Read | Delete | Describe),
            Kind::Cluster => matches!(self, Create | Alter | Describe | ClusterAction),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Topic,
    Group,
    Cluster,
}

/// What an operation is done to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
    Cluster,
}

impl Resource<'_> {
    fn kind(self) -> Kind {
        match self {
            Resource::Topic(_) => Kind::Topic,
            Resource::Group(_) => Kind::Group,
            Resource::Cluster => Kind::Cluster,
        }
    }

    fn error(self) -> ErrorCode {
        match self {
            Resource::Topic(_) => ErrorCode::TopicAuthorizationFailed,
            Resource::Group(_) => ErrorCode::GroupAuthorizationFailed,
            Resource::Cluster => ErrorCode::ClusterAuthorizationFailed,
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(name) => write!(f, "topic `{name}`"),
            Resource::Group(name) => write!(f, "group `{name}`"),
            Resource::Cluster => f.write_str("the cluster"),
        }
    }
}

/// Who sent a request: the common name of its certificate, and whether it is one of
/// the cluster's brokers (it presented this broker's own certificate).
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: std::sync::Arc<str>,
    pub broker: bool,
}

/// A name, a prefix (`orders.*`) or anything (`*`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("an empty name".into());
        }
        Ok(match text.strip_suffix('*') {
            Some("") => Pattern::Any,
            Some(prefix) if prefix.contains('*') => {
                return Err(format!("`{text}`: `*` may only end a name"));
            }
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None if text.contains('*') => {
                return Err(format!("`{text}`: `*` may only end a name"));
            }
            None => Pattern::Exact(text.to_string()),
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Pattern::Exact(exact) => exact == name,
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    principals: Vec<Pattern>,
    operations: HashSet<Operation>,
    topics: Vec<Pattern>,
    groups: Vec<Pattern>,
    cluster: bool,
}

impl Rule {
    fn covers(&self, principal: &str, resource: Resource<'_>) -> bool {
        self.principals.iter().any(|p| p.matches(principal))
            && match resource {
                Resource::Topic(name) => self.topics.iter().any(|p| p.matches(name)),
                Resource::Group(name) => self.groups.iter().any(|p| p.matches(name)),
                Resource::Cluster => self.cluster,
            }
    }
}

/// The rules of an `acl_file`.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    super_users: HashSet<String>,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    super_users: Vec<String>,
    #[serde(default)]
    allow: Vec<RuleFile>,
    #[serde(default)]
    deny: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    principals: Vec<String>,
    operations: Vec<String>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    cluster: bool,
}

impl RuleFile {
    fn parse(self, which: &str, index: usize) -> Result<Rule, String> {
        let at = |e: String| format!("[[{which}]] number {}: {e}", index + 1);
        let mut kinds = Vec::new();
        if !self.topics.is_empty() {
            kinds.push(Kind::Topic);
        }
        if !self.groups.is_empty() {
            kinds.push(Kind::Group);
        }
        if self.cluster {
            kinds.push(Kind::Cluster);
        }
        if kinds.is_empty() {
            return Err(at(
                "names no resource (`topics`, `groups` or `cluster = true`)".into(),
            ));
        }
        if self.principals.is_empty() {
            return Err(at(
                "names no principal (`principals = [\"*\"]` for every client)".into(),
            ));
        }
        if self.operations.is_empty() {
            return Err(at("names no operation".into()));
        }
        let mut operations = HashSet::new();
        for name in &self.operations {
            if name == "all" {
                operations.extend(Operation::ALL);
                continue;
            }
            let Some(op) = Operation::parse(name) else {
                return Err(at(format!(
                    "unknown operation `{name}` (read, write, create, delete, alter, describe, cluster_action, all)"
                )));
            };
            if !kinds.iter().any(|&kind| op.applies_to(kind)) {
                return Err(at(format!(
                    "operation `{name}` applies to none of the rule's resources"
                )));
            }
            operations.insert(op);
        }
        let patterns = |names: Vec<String>| -> Result<Vec<Pattern>, String> {
            names.iter().map(|n| Pattern::parse(n)).collect()
        };
        Ok(Rule {
            principals: patterns(self.principals).map_err(at)?,
            operations,
            topics: patterns(self.topics).map_err(at)?,
            groups: patterns(self.groups).map_err(at)?,
            cluster: self.cluster,
        })
    }
}

impl Acl {
    /// Parses an `acl_file`'s text (TOML); errors name the rule at fault.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let rules = |rules: Vec<RuleFile>, which: &str| -> Result<Vec<Rule>, String> {
            rules
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.parse(which, i))
                .collect()
        };
        Ok(Acl {
            super_users: file.super_users.into_iter().collect(),
            allow: rules(file.allow, "allow")?,
            deny: rules(file.deny, "deny")?,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Acl> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading acl_file {}: {e}", path.display()))?;
        Acl::parse(&text).map_err(|e| anyhow::anyhow!("acl_file {}: {e}", path.display()))
    }

    /// How many rules (allow and deny) the file holds, for the log.
    pub fn rule_count(&self) -> usize {
        self.allow.len() + self.deny.len()
    }

    /// What the file holds: "2 allow rules, 1 deny rule, 1 super user".
    pub fn summary(&self) -> String {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}",
            count(self.allow.len(), "allow rule"),
            count(self.deny.len(), "deny rule"),
            count(self.super_users.len(), "super user")
        )
    }

    /// Whether `principal` may do `op` to `resource`.
    pub fn allows(&self, principal: &Principal, op: Operation, resource: Resource<'_>) -> bool {
        self.decide(principal, op, resource).allowed()
    }

    /// Whether `principal` may do `op` to `resource`, and which rule says so.
    pub fn decide(&self, principal: &Principal, op: Operation, resource: Resource<'_>) -> Decision {
        if principal.broker {
            return Decision::Broker;
        }
        if self.super_users.contains(&*principal.name) {
            return Decision::SuperUser;
        }
        let name = &*principal.name;
        if let Some(i) = self
            .deny
            .iter()
            .position(|r| r.operations.contains(&op) && r.covers(name, resource))
        {
            return Decision::DeniedBy(i + 1);
        }
        let implied = |r: &Rule| match (op, resource.kind()) {
            (Operation::Describe, Kind::Topic) => r.operations.iter().any(|o| {
                matches!(
                    o,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                )
            }),
            (Operation::Describe, Kind::Group) => r
                .operations
                .iter()
                .any(|o| matches!(o, Operation::Read | Operation::Delete)),
            _ => false,
        };
        let allowed_by = |resource: Resource<'_>| {
            self.allow.iter().position(|r| {
                (r.operations.contains(&op) || implied(r)) && r.covers(name, resource)
            })
        };
        let by_cluster = || {
            (op == Operation::Create && matches!(resource, Resource::Topic(_)))
                .then(|| allowed_by(Resource::Cluster))
                .flatten()
        };
        match allowed_by(resource).or_else(by_cluster) {
            Some(i) => Decision::AllowedBy(i + 1),
            None => Decision::NoRule,
        }
    }

    /// `Ok` if `principal` may, else the error to answer with.
    fn require(
        &self,
        principal: &Principal,
        op: Operation,
        resource: Resource<'_>,
    ) -> Result<(), Denied> {
        if self.allows(principal, op, resource) {
            Ok(())
        } else {
            Err(Denied::new(principal, op, resource))
        }
    }

    /// Whether `principal` may write to some topic (the condition Kafka puts on
    /// asking for a producer id).
    fn writes_somewhere(&self, principal: &Principal) -> bool {
        principal.broker
            || self.super_users.contains(&*principal.name)
            || self.allow.iter().any(|r| {
                r.operations.contains(&Operation::Write)
                    && !r.topics.is_empty()
                    && r.principals.iter().any(|p| p.matches(&principal.name))
            })
    }
}

/// What [`Acl::decide`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The client presented this broker's own certificate.
    Broker,
    SuperUser,
    /// The `[[allow]]` rule of this number (from 1, in file order).
    AllowedBy(usize),
    /// The `[[deny]]` rule of this number.
    DeniedBy(usize),
    /// No rule allows it.
    NoRule,
}

impl Decision {
    pub fn allowed(self) -> bool {
        matches!(
            self,
            Decision::Broker | Decision::SuperUser | Decision::AllowedBy(_)
        )
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Broker => f.write_str("allowed: a broker of the cluster"),
            Decision::SuperUser => f.write_str("allowed: a super user"),
            Decision::AllowedBy(i) => write!(f, "allowed by [[allow]] number {i}"),
            Decision::DeniedBy(i) => write!(f, "denied by [[deny]] number {i}"),
            Decision::NoRule => f.write_str("denied: no rule allows it"),
        }
    }
}

/// A refusal: its code and the message that says who may not do what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Denied {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Denied {
    fn new(principal: &Principal, op: Operation, resource: Resource<'_>) -> Denied {
        Denied {
            code: resource.error(),
            message: format!(
                "client `{}` may not {} {resource} (acl_file)",
                principal.name,
                op.name().replace('_', " "),
            ),
        }
    }
}

/// What the dispatcher needs to know of the broker's topics to check a request.
pub(crate) trait Topics {
    /// Whether a request naming `topic` would create it (`auto_create_topics` and
    /// no such topic): that needs the create permission too.
    fn would_create(&self, topic: &str) -> bool;
    /// The name of the topic with ID `id`, if one has it.
    fn name_of(&self, id: TopicId) -> Option<String>;
}

/// The outcome of [`check`].
#[derive(Debug)]
pub(crate) enum Checked {
    /// Serve `request` (from which denied topics may have been removed), then pass
    /// the response through `after`.
    Serve { request: Request, after: After },
    /// Answer the whole request with this error (the request handed back, for a
    /// listener whose refusal names what was asked).
    Refuse(Denied, Request),
}

/// What to do to a response once the request is served.
#[derive(Debug, Default)]
pub(crate) enum After {
    #[default]
    Nothing,
    /// Add these topics (removed from the request) with their partitions and the
    /// reason, as the response's per-partition errors.
    AddDenied(Vec<(String, Vec<u32>, Denied)>),
    /// [`After::AddDenied`] for a `Fetch`, with the ID each topic was asked by
    /// ([`TopicId::NONE`] when by name), for the answer to name it by.
    FetchDenied(Vec<(String, TopicId, Vec<u32>, Denied)>),
    /// Keep only the topics (or groups) the client may describe.
    FilterDescribable,
    /// Add denied topics to a `Metadata` answer, then keep only describable ones.
    MetadataDenied(Vec<(String, Denied)>),
}

impl After {
    /// How many topics the request lost.
    pub(crate) fn denied_topics(&self) -> u64 {
        match self {
            After::AddDenied(denied) => denied.len() as u64,
            After::FetchDenied(denied) => denied.len() as u64,
            After::MetadataDenied(denied) => denied.len() as u64,
            After::Nothing | After::FilterDescribable => 0,
        }
    }
}

/// What finishes a served request's response: [`After`] with the rules and the
/// principal it was checked with (nothing without `acl_file`).
#[derive(Debug, Default)]
pub(crate) struct Finish(Option<(std::sync::Arc<Acl>, Principal, After)>);

impl Finish {
    pub(crate) fn new(acl: std::sync::Arc<Acl>, principal: Principal, after: After) -> Finish {
        Finish(Some((acl, principal, after)))
    }

    pub(crate) fn finish(self, response: Response) -> Response {
        match self.0 {
            Some((acl, principal, after)) => after.apply(response, &acl, &principal),
            None => response,
        }
    }
}

/// Removes from `topics` those `allowed` refuses; returns them as (name, partitions,
/// why), `describe` giving each one's name and partitions.
fn split<T>(
    topics: &mut Vec<T>,
    describe: impl Fn(&T) -> (&String, Vec<u32>),
    allowed: impl Fn(&str) -> Result<(), Denied>,
) -> Vec<(String, Vec<u32>, Denied)> {
    let mut denied = Vec::new();
    topics.retain(|t| {
        let (name, partitions) = describe(t);
        match allowed(name) {
            Ok(()) => true,
            Err(d) => {
                denied.push((name.clone(), partitions, d));
                false
            }
        }
    });
    denied
}

fn partitions<P>(partitions: &[P], index: impl Fn(&P) -> u32) -> Vec<u32> {
    partitions.iter().map(index).collect()
}

/// Decides what happens to `request` from `principal` under `acl`.
pub(crate) fn check(
    acl: &Acl,
    principal: &Principal,
    request: Request,
    topics: &dyn Topics,
) -> Checked {
    use Operation::*;
    let topic_op = |name: &str, op: Operation| -> Result<(), Denied> {
        acl.require(principal, op, Resource::Topic(name))?;
        if topics.would_create(name) {
            acl.require(principal, Create, Resource::Topic(name))?;
        }
        Ok(())
    };
    let whole = |result: Result<(), Denied>, request: Request| match result {
        Ok(()) => Checked::Serve {
            request,
            after: After::Nothing,
        },
        Err(denied) => Checked::Refuse(denied, request),
    };
    // `op` on every one of `names`, else the first refusal.
    let topics_need = |op, names: &mut dyn Iterator<Item = &str>| -> Result<(), Denied> {
        for name in names {
            acl.require(principal, op, Resource::Topic(name))?;
        }
        Ok(())
    };
    let cluster = |op| acl.require(principal, op, Resource::Cluster);
    let group = |op, id: &str| acl.require(principal, op, Resource::Group(id));
    let groups_need = |op, ids: &[String]| ids.iter().try_for_each(|id| group(op, id));
    match request {
        Request::ApiVersions(_) => whole(Ok(()), request),
        Request::Metadata(mut r) => {
            let denied = match &mut r.topics {
                Some(names) => split(names, |n| (n, Vec::new()), |n| topic_op(n, Describe))
                    .into_iter()
                    .map(|(name, _, d)| (name, d))
                    .collect(),
                None => Vec::new(),
            };
            Checked::Serve {
                request: Request::Metadata(r),
                after: After::MetadataDenied(denied),
            }
        }
        Request::Produce(mut r) => {
            let denied = split(
                &mut r.topics,
                |t| (&t.name, partitions(&t.partitions, |p| p.partition)),
                |name| topic_op(name, Write),
            );
            Checked::Serve {
                request: Request::Produce(r),
                after: After::AddDenied(denied),
            }
        }
        Request::Fetch(ref r) if r.replica_id != CONSUMER_REPLICA_ID => {
            whole(cluster(ClusterAction), request)
        }
        Request::Fetch(mut r) => {
            // The rules name topics: one asked by ID is checked by its name. No
            // topic has an ID left nameless: nothing to check, the fetch answers
            // `UnknownTopicId`.
            let mut ids = Vec::new();
            for t in r.topics.iter_mut().filter(|t| !t.id.is_none()) {
                t.name = topics.name_of(t.id).unwrap_or_default();
                ids.push((t.name.clone(), t.id));
            }
            let denied = split(
                &mut r.topics,
                |t| (&t.name, partitions(&t.partitions, |p| p.partition)),
                |name| {
                    if name.is_empty() {
                        Ok(())
                    } else {
                        topic_op(name, Read)
                    }
                },
            );
            let id_of = |name: &str| {
                ids.iter()
                    .find(|(n, _)| n == name)
                    .map_or(TopicId::NONE, |(_, id)| *id)
            };
            let denied = denied
                .into_iter()
                .map(|(name, partitions, d)| {
                    let id = id_of(&name);
                    (name, id, partitions, d)
                })
                .collect();
            if r.topics.is_empty() {
                // Nothing left to wait for: answer the refusals now, not at the
                // end of the long poll.
                r.max_wait_ms = 0;
            }
            Checked::Serve {
                request: Request::Fetch(r),
                after: After::FetchDenied(denied),
            }
        }
        Request::ListOffsets(mut r) => {
            let denied = split(
                &mut r.topics,
                |t| (&t.name, partitions(&t.partitions, |p| p.partition)),
                |name| topic_op(name, Describe),
            );
            Checked::Serve {
                request: Request::ListOffsets(r),
                after: After::AddDenied(denied),
            }
        }
        Request::OffsetForLeaderEpoch(mut r) => {
            let denied = split(
                &mut r.topics,
                |t| (&t.name, partitions(&t.partitions, |p| p.partition)),
                // Never creates a topic, unlike the requests `topic_op` is for.
                |name| acl.require(principal, Describe, Resource::Topic(name)),
            );
            Checked::Serve {
                request: Request::OffsetForLeaderEpoch(r),
                after: After::AddDenied(denied),
            }
        }
        Request::CreateTopics(ref r) => {
            let result = topics_need(Create, &mut r.topics.iter().map(|t| t.name.as_str()));
            whole(result, request)
        }
        Request::DeleteTopics(ref r) => {
            // A topic named by ID needs delete on its name; an ID no topic has is
            // left to the broker, which answers it `UnknownTopicId`.
            let by_id: Vec<String> = r.ids.iter().filter_map(|id| topics.name_of(*id)).collect();
            let mut names = r.names.iter().chain(&by_id).map(String::as_str);
            let result = topics_need(Delete, &mut names);
            whole(result, request)
        }
        Request::DescribeTopics(ref r) if r.names.is_empty() => Checked::Serve {
            request,
            after: After::FilterDescribable,
        },
        Request::DescribeTopics(ref r) => {
            let result = topics_need(Describe, &mut r.names.iter().map(String::as_str));
            whole(result, request)
        }
        Request::AlterTopicConfigs(ref r) => {
            let result = topics_need(Alter, &mut r.topics.iter().map(|t| t.name.as_str()));
            whole(result, request)
        }
        Request::CreatePartitions(ref r) => {
            let result = topics_need(Alter, &mut r.topics.iter().map(|t| t.name.as_str()));
            whole(result, request)
        }
        Request::DeleteRecords(ref r) => {
            let result = topics_need(Delete, &mut r.topics.iter().map(|t| t.name.as_str()));
            whole(result, request)
        }
        Request::FindCoordinator(ref r) => whole(group(Describe, &r.group_id), request),
        Request::JoinGroup(ref r) => whole(group(Read, &r.group_id), request),
        Request::SyncGroup(ref r) => whole(group(Read, &r.group_id), request),
        Request::Heartbeat(ref r) => whole(group(Read, &r.group_id), request),
        Request::LeaveGroup(ref r) => whole(group(Read, &r.group_id), request),
        Request::OffsetCommit(ref r) => {
            let result = group(Read, &r.group_id)
                .and_then(|()| topics_need(Read, &mut r.topics.iter().map(|t| t.topic.as_str())));
            whole(result, request)
        }
        Request::OffsetFetch(ref r) => {
            let result = group(Describe, &r.group_id).and_then(|()| {
                topics_need(
                    Describe,
                    &mut r.topics.iter().flatten().map(|t| t.topic.as_str()),
                )
            });
            match result {
                Ok(()) => Checked::Serve {
                    request,
                    after: After::FilterDescribable,
                },
                Err(d) => Checked::Refuse(d, request),
            }
        }
        Request::ListGroups(_) => Checked::Serve {
            request,
            after: After::FilterDescribable,
        },
        Request::DescribeGroups(ref r) => {
            let result = groups_need(Describe, &r.group_ids);
            whole(result, request)
        }
        Request::DeleteGroups(ref r) => {
            let result = groups_need(Delete, &r.group_ids);
            whole(result, request)
        }
        // The group whole; each topic on its own, as Kafka does (the others' commits
        // go all the same).
        Request::OffsetDelete(mut r) => match group(Delete, &r.group_id) {
            Err(denied) => Checked::Refuse(denied, Request::OffsetDelete(r)),
            Ok(()) => {
                let denied = split(
                    &mut r.topics,
                    |t| (&t.topic, t.partitions.clone()),
                    |name| topic_op(name, Read),
                );
                Checked::Serve {
                    request: Request::OffsetDelete(r),
                    after: After::AddDenied(denied),
                }
            }
        },
        Request::InitProducerId(_) => {
            let result = if acl.writes_somewhere(principal) {
                Ok(())
            } else {
                Err(Denied {
                    code: ErrorCode::ClusterAuthorizationFailed,
                    message: format!(
                        "client `{}` may write to no topic, so it gets no producer id (acl_file)",
                        principal.name
                    ),
                })
            };
            whole(result, request)
        }
        Request::TopicAttach(ref r) => whole(
            acl.require(principal, Alter, Resource::Topic(&r.topic)),
            request,
        ),
        Request::TopicDetach(ref r) => whole(
            acl.require(principal, Alter, Resource::Topic(&r.topic)),
            request,
        ),
        Request::PluginList | Request::PluginDescribe(_) => whole(cluster(Describe), request),
        Request::PluginDeploy(_) | Request::PluginRemove(_) => whole(cluster(Alter), request),
        Request::AlterPartitionReassignments(_)
        | Request::ElectLeaders(_)
        | Request::UnregisterBroker(_) => whole(cluster(Alter), request),
        Request::ListPartitionReassignments(_)
        | Request::DescribeCluster
        | Request::DescribeLogs(_) => whole(cluster(Describe), request),
        Request::Raft(_)
        | Request::BrokerHeartbeat(_)
        | Request::AlterPartition(_)
        | Request::ControlledShutdown(_) => whole(cluster(ClusterAction), request),
    }
}

impl After {
    /// Finishes `response` for `principal`.
    pub(crate) fn apply(self, response: Response, acl: &Acl, principal: &Principal) -> Response {
        let describable =
            |name: &str| acl.allows(principal, Operation::Describe, Resource::Topic(name));
        match (self, response) {
            (After::Nothing, response) => response,
            (After::AddDenied(denied), Response::Produce(mut r)) => {
                r.topics
                    .extend(denied.into_iter().map(|(name, partitions, d)| {
                        ProduceTopicResponse {
                            name,
                            partitions: partitions
                                .into_iter()
                                .map(|partition| ProducePartitionResponse {
                                    partition,
                                    error: d.code,
                                    message: d.message.clone(),
                                    base_offset: -1,
                                    log_append_time: -1,
                                    log_start_offset: -1,
                                })
                                .collect(),
                        }
                    }));
                Response::Produce(r)
            }
            (After::FetchDenied(denied), Response::Fetch(mut r)) => {
                r.topics
                    .extend(denied.into_iter().map(|(name, id, partitions, d)| {
                        FetchTopicResponse {
                            name,
                            id,
                            partitions: partitions
                                .into_iter()
                                .map(|partition| FetchPartitionResponse {
                                    partition,
                                    error: d.code,
                                    message: d.message.clone(),
                                    high_watermark: -1,
                                    log_start_offset: -1,
                                    records: bytes::Bytes::new(),
                                    diverging_epoch: None,
                                })
                                .collect(),
                        }
                    }));
                Response::Fetch(r)
            }
            (After::AddDenied(denied), Response::ListOffsets(mut r)) => {
                r.topics
                    .extend(denied.into_iter().map(|(name, partitions, d)| {
                        ListOffsetsTopicResponse {
                            name,
                            partitions: partitions
                                .into_iter()
                                .map(|partition| ListOffsetsPartitionResponse {
                                    partition,
                                    error: d.code,
                                    offset: -1,
                                    timestamp: -1,
                                    leader_epoch: NO_LEADER_EPOCH,
                                })
                                .collect(),
                        }
                    }));
                Response::ListOffsets(r)
            }
            (After::AddDenied(denied), Response::OffsetForLeaderEpoch(mut r)) => {
                r.topics
                    .extend(denied.into_iter().map(|(name, partitions, d)| {
                        EpochEndTopic {
                            name,
                            partitions: partitions
                                .into_iter()
                                .map(|partition| EpochEnd {
                                    partition,
                                    error: d.code,
                                    message: d.message.clone(),
                                    leader_epoch: UNDEFINED_EPOCH,
                                    end_offset: UNDEFINED_EPOCH_OFFSET,
                                })
                                .collect(),
                        }
                    }));
                Response::OffsetForLeaderEpoch(r)
            }
            (After::AddDenied(denied), Response::OffsetDelete(mut r)) => {
                for (topic, _, d) in denied {
                    r.refuse(topic, d.code, d.message);
                }
                Response::OffsetDelete(r)
            }
            (After::MetadataDenied(denied), Response::Metadata(mut r)) => {
                r.topics.retain(|t| describable(&t.name));
                r.topics
                    .extend(denied.into_iter().map(|(name, d)| TopicMetadata {
                        name,
                        id: TopicId::NONE,
                        error: d.code,
                        message: d.message,
                        partitions: Vec::new(),
                    }));
                Response::Metadata(r)
            }
            (After::FilterDescribable, Response::DescribeTopics(mut r)) => {
                r.topics.retain(|t| describable(&t.name));
                Response::DescribeTopics(r)
            }
            (After::FilterDescribable, Response::OffsetFetch(mut r)) => {
                r.topics.retain(|t| describable(&t.topic));
                Response::OffsetFetch(r)
            }
            (After::FilterDescribable, Response::ListGroups(mut r)) => {
                r.groups.retain(|g| {
                    acl.allows(principal, Operation::Describe, Resource::Group(&g.group_id))
                });
                Response::ListGroups(r)
            }
            // An error answer (or acks=0's none) has nothing to add to.
            (_, response) => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_wire::group::{
        GroupListing, ListGroupsResponse, OffsetCommitRequest, TopicOffsets,
    };

    const RULES: &str = r#"
        super_users = ["ops"]

        [[allow]]
        principals = ["orders-app"]
        operations = ["write"]
        topics = ["orders", "payments.*"]

        [[allow]]
        principals = ["*"]
        operations = ["read"]
        topics = ["public.*"]
        groups = ["*"]

        [[allow]]
        principals = ["admin"]
        operations = ["create", "delete", "describe"]
        cluster = true
        topics = ["*"]

        [[deny]]
        principals = ["*"]
        operations = ["read"]
        topics = ["public.secret"]
    "#;

    fn who(name: &str) -> Principal {
        Principal {
            name: name.into(),
            broker: false,
        }
    }

    struct Existing(bool);
    impl Topics for Existing {
        fn would_create(&self, _: &str) -> bool {
            self.0
        }

        fn name_of(&self, id: TopicId) -> Option<String> {
            (id == TopicId([1; 16])).then(|| "orders".to_string())
        }
    }

    #[test]
    fn allows_what_a_rule_names_and_nothing_else() {
        use Operation::*;
        let acl = Acl::parse(RULES).unwrap();
        let app = who("orders-app");
        assert!(acl.allows(&app, Write, Resource::Topic("orders")));
        assert!(acl.allows(&app, Write, Resource::Topic("payments.eu")));
        // Writing implies describing; nothing implies reading.
        assert!(acl.allows(&app, Describe, Resource::Topic("orders")));
        assert!(!acl.allows(&app, Read, Resource::Topic("orders")));
        assert!(!acl.allows(&app, Write, Resource::Topic("orders2")));
        assert!(!acl.allows(&app, Write, Resource::Topic("payments")));
        assert!(!acl.allows(&app, Create, Resource::Topic("orders")));
        // A wildcard principal, and a deny that wins over it.
        let anyone = who("someone");
        assert!(acl.allows(&anyone, Read, Resource::Topic("public.news")));
        assert!(!acl.allows(&anyone, Read, Resource::Topic("public.secret")));
        assert!(acl.allows(&anyone, Describe, Resource::Group("g")));
        assert!(!acl.allows(&anyone, Delete, Resource::Group("g")));
        // Creating on the cluster creates any topic.
        let admin = who("admin");
        assert!(acl.allows(&admin, Create, Resource::Topic("anything")));
        assert!(acl.allows(&admin, Describe, Resource::Cluster));
        assert!(!acl.allows(&admin, Alter, Resource::Cluster));
        // Super users and brokers may do anything, even what a deny names.
        assert!(acl.allows(&who("ops"), Read, Resource::Topic("public.secret")));
        let broker = Principal {
            name: "region".into(),
            broker: true,
        };
        assert!(acl.allows(&broker, ClusterAction, Resource::Cluster));
        assert!(!acl.allows(&who("region"), ClusterAction, Resource::Cluster));
    }

    #[test]
    fn a_decision_names_the_rule_that_made_it() {
        use Operation::*;
        let acl = Acl::parse(RULES).unwrap();
        let decide = |name: &str, op, resource| acl.decide(&who(name), op, resource);
        assert_eq!(
            decide("orders-app", Write, Resource::Topic("orders")),
            Decision::AllowedBy(1)
        );
        assert_eq!(
            decide("x", Read, Resource::Topic("public.secret")),
            Decision::DeniedBy(1)
        );
        assert_eq!(
            decide("x", Read, Resource::Topic("public.a")),
            Decision::AllowedBy(2)
        );
        // Creating a topic through the cluster's create.
        assert_eq!(
            decide("admin", Create, Resource::Topic("t")),
            Decision::AllowedBy(3)
        );
        assert_eq!(
            decide("x", Write, Resource::Topic("orders")),
            Decision::NoRule
        );
        assert_eq!(decide("ops", Alter, Resource::Cluster), Decision::SuperUser);
        assert_eq!(
            Decision::DeniedBy(1).to_string(),
            "denied by [[deny]] number 1"
        );
        assert_eq!(acl.summary(), "3 allow rules, 1 deny rule, 1 super user");
    }

    #[test]
    fn mistakes_in_the_file_are_refused_with_the_rule_named() {
        let cases = [
            (
                "[[allow]]\nprincipals=[\"a\"]\noperations=[\"read\"]",
                "names no resource",
            ),
            (
                "[[allow]]\nprincipals=[\"a\"]\noperations=[\"reed\"]\ntopics=[\"t\"]",
                "[[allow]] number 1: unknown operation `reed`",
            ),
            (
                "[[deny]]\nprincipals=[\"a\"]\noperations=[\"write\"]\ngroups=[\"g\"]",
                "operation `write` applies to none",
            ),
            (
                "[[allow]]\nprincipals=[\"a\"]\noperations=[\"read\"]\ntopics=[\"a*b\"]",
                "`*` may only end a name",
            ),
            (
                "[[allow]]\nprincipals=[]\noperations=[\"read\"]\ntopics=[\"t\"]",
                "no principal",
            ),
            ("super_user = [\"x\"]", "unknown field `super_user`"),
        ];
        for (text, want) in cases {
            let err = Acl::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: got `{err}`, want `{want}`");
        }
        assert_eq!(Acl::parse("").unwrap().rule_count(), 0);
    }

    fn produce(topics: &[&str]) -> Request {
        Request::Produce(ProduceRequest {
            acks: 1,
            timeout_ms: 1000,
            topics: topics
                .iter()
                .map(|name| ProduceTopic {
                    name: name.to_string(),
                    partitions: vec![ProducePartition {
                        partition: 0,
                        records: bytes::Bytes::new(),
                    }],
                })
                .collect(),
        })
    }

    #[test]
    fn a_produce_loses_only_the_topics_the_client_may_not_write() {
        let acl = Acl::parse(RULES).unwrap();
        let app = who("orders-app");
        let Checked::Serve { request, after } =
            check(&acl, &app, produce(&["orders", "audit"]), &Existing(false))
        else {
            panic!("refused whole")
        };
        let Request::Produce(served) = request else {
            panic!()
        };
        assert_eq!(served.topics.len(), 1);
        assert_eq!(served.topics[0].name, "orders");
        assert_eq!(after.denied_topics(), 1);
        let response = after.apply(
            Response::Produce(ProduceResponse { topics: Vec::new() }),
            &acl,
            &app,
        );
        let Response::Produce(r) = response else {
            panic!()
        };
        assert_eq!(r.topics[0].name, "audit");
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.error, ErrorCode::TopicAuthorizationFailed);
        assert_eq!(
            p.message,
            "client `orders-app` may not write topic `audit` (acl_file)"
        );

        // With auto-create on, writing to a topic that does not exist needs create.
        let Checked::Serve { after, .. } = check(&acl, &app, produce(&["orders"]), &Existing(true))
        else {
            panic!()
        };
        assert_eq!(after.denied_topics(), 1);
    }

    /// OffsetForLeaderEpoch needs describe on each topic (never create, even where
    /// a fetch would auto-create); a topic denied is answered per partition.
    #[test]
    fn leader_epoch_ends_lose_only_the_topics_the_client_may_not_describe() {
        let acl = Acl::parse(RULES).unwrap();
        let app = who("orders-app");
        let asked = |names: &[&str]| {
            Request::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest {
                topics: names
                    .iter()
                    .map(|name| EpochQueryTopic {
                        name: name.to_string(),
                        partitions: vec![EpochQuery {
                            partition: 2,
                            current_leader_epoch: 4,
                            leader_epoch: 3,
                        }],
                    })
                    .collect(),
            })
        };
        let Checked::Serve { request, after } =
            check(&acl, &app, asked(&["orders", "audit"]), &Existing(true))
        else {
            panic!("refused whole")
        };
        let Request::OffsetForLeaderEpoch(served) = request else {
            panic!()
        };
        let served: Vec<&str> = served.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(served, ["orders"]);
        let response = after.apply(
            Response::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse { topics: Vec::new() }),
            &acl,
            &app,
        );
        let Response::OffsetForLeaderEpoch(r) = response else {
            panic!()
        };
        assert_eq!(r.topics[0].name, "audit");
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.partition, p.error, p.leader_epoch, p.end_offset),
            (
                2,
                ErrorCode::TopicAuthorizationFailed,
                UNDEFINED_EPOCH,
                UNDEFINED_EPOCH_OFFSET
            )
        );
        assert!(
            p.message.contains("may not describe topic `audit`"),
            "{p:?}"
        );
    }

    #[test]
    fn whole_requests_are_refused_with_the_resource_named() {
        let acl = Acl::parse(RULES).unwrap();
        let refused =
            |name: &str, request: Request| match check(&acl, &who(name), request, &Existing(false))
            {
                Checked::Refuse(d, _) => Some(d),
                Checked::Serve { .. } => None,
            };
        let create = Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: "new".into(),
                partitions: 1,
                replication_factor: 0,
                configs: Vec::new(),
            }],
            validate_only: false,
        });
        let d = refused("orders-app", create.clone()).unwrap();
        assert_eq!(d.code, ErrorCode::TopicAuthorizationFailed);
        assert!(
            d.message.contains("may not create topic `new`"),
            "{}",
            d.message
        );
        assert_eq!(refused("admin", create), None);
        // A topic named by ID needs delete on its name (`Existing` names ID 1
        // `orders`); an ID no topic has is left to the broker.
        let by_id = |id| {
            Request::DeleteTopics(DeleteTopicsRequest {
                names: Vec::new(),
                ids: vec![TopicId([id; 16])],
            })
        };
        let d = refused("orders-app", by_id(1)).unwrap();
        assert!(
            d.message.contains("may not delete topic `orders`"),
            "{}",
            d.message
        );
        assert_eq!(refused("admin", by_id(1)), None);
        assert_eq!(refused("orders-app", by_id(2)), None);
        let commit = Request::OffsetCommit(OffsetCommitRequest {
            group_id: "billing".into(),
            member_id: String::new(),
            member_epoch: -1,
            topics: vec![TopicOffsets {
                topic: "orders".into(),
                partitions: Vec::new(),
            }],
        });
        // The group may be read by anyone, the topic not by orders-app.
        let d = refused("orders-app", commit).unwrap();
        assert_eq!(d.code, ErrorCode::TopicAuthorizationFailed);
        let d = refused("orders-app", Request::DescribeCluster).unwrap();
        assert_eq!(d.code, ErrorCode::ClusterAuthorizationFailed);
        assert!(refused(
            "orders-app",
            Request::InitProducerId(meridian_wire::idempotence::InitProducerIdRequest {
                transactional_id: None
            })
        )
        .is_none());
        assert!(refused(
            "someone",
            Request::InitProducerId(meridian_wire::idempotence::InitProducerIdRequest {
                transactional_id: None
            })
        )
        .is_some());
        let follower_fetch = Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 0,
            topics: Vec::new(),
            filter: None,
            replica_id: 2,
        });
        assert!(refused("admin", follower_fetch.clone()).is_some());
        let broker = Principal {
            name: "region".into(),
            broker: true,
        };
        assert!(matches!(
            check(&acl, &broker, follower_fetch, &Existing(false)),
            Checked::Serve { .. }
        ));
    }

    #[test]
    fn a_fetch_left_with_no_topic_is_answered_at_once() {
        let acl = Acl::parse(RULES).unwrap();
        let fetch = |topics: &[&str]| {
            Request::Fetch(FetchRequest {
                max_wait_ms: 500,
                min_bytes: 1,
                max_bytes: 1 << 20,
                topics: topics
                    .iter()
                    .map(|name| FetchTopic {
                        name: name.to_string(),
                        id: TopicId::NONE,
                        partitions: vec![FetchPartition::new(0, 0, 1 << 20)],
                    })
                    .collect(),
                filter: None,
                replica_id: CONSUMER_REPLICA_ID,
            })
        };
        let served = |request| match check(&acl, &who("x"), request, &Existing(false)) {
            Checked::Serve {
                request: Request::Fetch(r),
                after,
            } => (r, after.denied_topics()),
            other => panic!("{other:?}"),
        };
        let (r, denied) = served(fetch(&["public.a", "orders"]));
        assert_eq!((r.topics.len(), r.max_wait_ms, denied), (1, 500, 1));
        let (r, denied) = served(fetch(&["orders"]));
        assert_eq!((r.topics.len(), r.max_wait_ms, denied), (0, 0, 1));
    }

    /// A topic asked by its ID is checked by its name, and a refusal names it by
    /// the ID again; an ID no topic has is left for the fetch to answer
    /// (`UnknownTopicId`), whatever the rules say.
    #[test]
    fn a_fetch_by_topic_id_is_checked_by_the_topics_name() {
        let acl = Acl::parse(RULES).unwrap();
        let topic = |name: &str, id| FetchTopic {
            name: name.to_string(),
            id,
            partitions: vec![FetchPartition::new(0, 0, 1 << 20)],
        };
        let orders = TopicId([1; 16]);
        let unknown = TopicId([2; 16]);
        // The name a client sends with an ID does not count: the ID's does.
        let fetch = Request::Fetch(FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![
                topic("public.a", orders),
                topic("", unknown),
                topic("public.a", TopicId::NONE),
            ],
            filter: None,
            replica_id: CONSUMER_REPLICA_ID,
        });
        let Checked::Serve {
            request: Request::Fetch(r),
            after,
        } = check(&acl, &who("x"), fetch.clone(), &Existing(false))
        else {
            panic!()
        };
        let served: Vec<_> = r.topics.iter().map(|t| (t.name.as_str(), t.id)).collect();
        assert_eq!(served, [("", unknown), ("public.a", TopicId::NONE)]);
        let Response::Fetch(answer) = after.apply(
            Response::Fetch(FetchResponse { topics: Vec::new() }),
            &acl,
            &who("x"),
        ) else {
            panic!()
        };
        let refused: Vec<_> = answer
            .topics
            .iter()
            .map(|t| (t.name.as_str(), t.id, t.partitions[0].error))
            .collect();
        assert_eq!(
            refused,
            [("orders", orders, ErrorCode::TopicAuthorizationFailed)]
        );
        // A super user reads `orders` by its ID.
        let Checked::Serve {
            request: Request::Fetch(r),
            after,
        } = check(&acl, &who("ops"), fetch, &Existing(false))
        else {
            panic!()
        };
        assert_eq!(
            (r.topics[0].name.as_str(), r.topics[0].id),
            ("orders", orders)
        );
        assert_eq!(after.denied_topics(), 0);
    }

    #[test]
    fn listings_show_only_what_the_client_may_describe() {
        let acl = Acl::parse(RULES).unwrap();
        let app = who("orders-app");
        let Checked::Serve { request, after } = check(
            &acl,
            &app,
            Request::Metadata(MetadataRequest { topics: None }),
            &Existing(false),
        ) else {
            panic!()
        };
        assert_eq!(request, Request::Metadata(MetadataRequest { topics: None }));
        let topic = |name: &str| TopicMetadata {
            name: name.into(),
            id: TopicId::NONE,
            error: ErrorCode::None,
            message: String::new(),
            partitions: Vec::new(),
        };
        let Response::Metadata(r) = after.apply(
            Response::Metadata(MetadataResponse {
                brokers: Vec::new(),
                controller_id: 1,
                topics: vec![topic("orders"), topic("audit"), topic("payments.eu")],
            }),
            &acl,
            &app,
        ) else {
            panic!()
        };
        let names: Vec<_> = r.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["orders", "payments.eu"]);

        let Checked::Serve { after, .. } = check(
            &acl,
            &who("nobody-special"),
            Request::ListGroups(meridian_wire::group::ListGroupsRequest {}),
            &Existing(false),
        ) else {
            panic!()
        };
        let Response::ListGroups(r) = after.apply(
            Response::ListGroups(ListGroupsResponse {
                groups: vec![GroupListing {
                    group_id: "g".into(),
                    state: "Stable".into(),
                }],
            }),
            &acl,
            &who("nobody-special"),
        ) else {
            panic!()
        };
        assert_eq!(r.groups.len(), 1);
    }
}
