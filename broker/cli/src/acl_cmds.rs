//! `meridian acl`: check an `acl_file` before a broker loads it, and ask what it
//! decides for one client, operation and resource.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use meridian_server::acl::{Acl, Operation, Principal, Resource};

#[derive(Subcommand)]
pub enum AclCommand {
    /// Parse FILE as a broker would (errors name the rule at fault); with
    /// `--client` and `--operation` and a resource, say whether the rules allow it
    /// and which rule decides (exit status 1 when they do not).
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The rules file (`acl_file`).
    file: PathBuf,
    /// A client certificate's common name.
    #[arg(long, requires = "operation")]
    client: Option<String>,
    /// read, write, create, delete, alter, describe or cluster_action.
    #[arg(long, requires = "client")]
    operation: Option<String>,
    /// The topic the operation is on.
    #[arg(long, conflicts_with_all = ["group", "cluster"])]
    topic: Option<String>,
    /// The consumer group the operation is on.
    #[arg(long, conflicts_with = "cluster")]
    group: Option<String>,
    /// The operation is on the cluster.
    #[arg(long)]
    cluster: bool,
}

pub fn run(command: AclCommand) -> anyhow::Result<()> {
    match command {
        AclCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let acl = Acl::load(&args.file)?;
    let (Some(client), Some(operation)) = (args.client, args.operation) else {
        println!("{}: {}", args.file.display(), acl.summary());
        return Ok(());
    };
    let Some(op) = Operation::parse(&operation) else {
        bail!(
            "unknown operation `{operation}` (read, write, create, delete, alter, describe, cluster_action)"
        );
    };
    let resource = match (&args.topic, &args.group, args.cluster) {
        (Some(topic), _, _) => Resource::Topic(topic),
        (_, Some(group), _) => Resource::Group(group),
        (_, _, true) => Resource::Cluster,
        _ => bail!("name what the operation is on: --topic, --group or --cluster"),
    };
    let principal = Principal {
        name: client.as_str().into(),
        broker: false,
    };
    let decision = acl.decide(&principal, op, resource);
    let line = format!("client `{client}` {} {resource}: {decision}", op.name());
    if decision.allowed() {
        println!("{line}");
        Ok(())
    } else {
        bail!("{line}")
    }
}
