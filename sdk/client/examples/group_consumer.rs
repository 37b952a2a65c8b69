//! A consumer-group member: consumes a topic with the other members of its group,
//! resuming from the group's committed offsets. Run it in two terminals and watch the
//! partitions split; stop one and the other takes them over.
//!
//! ```text
//! cargo run -p meridian-client --example group_consumer -- 127.0.0.1:9092 sha256:… [topic] [group]
//! ```

mod common;

use std::time::Duration;

use meridian_client::{AutoOffsetReset, ConsumerConfig, GroupConfig, RebalanceListener};

/// Prints partitions as the group moves them.
struct Announce;

impl RebalanceListener for Announce {
    fn on_assigned(&mut self, partitions: &[(String, u32)]) {
        println!("assigned {partitions:?}");
    }
    fn on_revoked(&mut self, partitions: &[(String, u32)]) {
        println!("revoked {partitions:?} (positions committed)");
    }
    fn on_lost(&mut self, partitions: &[(String, u32)]) {
        println!("lost {partitions:?}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let topic = args.get(2).cloned().unwrap_or_else(|| "example".into());
    let group = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "example-group".into());
    let client = common::connect(&args).await?;

    let mut consumer = client.consumer(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    consumer.set_rebalance_listener(Box::new(Announce));
    consumer
        .subscribe(GroupConfig::new(group), &[&topic])
        .await?;
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let records = tokio::select! {
            records = consumer.poll(Duration::from_secs(1)) => records?,
            _ = &mut shutdown => break,
        };
        for record in &records {
            let value = record
                .value
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            println!(
                "{}/{} offset {}: {value}",
                record.topic, record.partition, record.offset
            );
        }
    }
    // Commits what was printed and leaves, so the others take over at once.
    consumer.close().await?;
    Ok(())
}
