//! Sends records to a topic (created if missing) and prints where they landed.
//!
//! ```text
//! cargo run -p meridian-client --example producer -- 127.0.0.1:9092 sha256:… [topic] [count]
//! MERIDIAN_FINGERPRINT=sha256:… cargo run -p meridian-client --example producer
//! ```

mod common;

use meridian_client::{ErrorCode, NewTopic, ProducerConfig, ProducerRecord};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let topic = args.get(2).cloned().unwrap_or_else(|| "example".into());
    let count: u64 = args.get(3).map_or(Ok(10), |n| n.parse())?;
    let client = common::connect(&args).await?;

    match client.admin().create_topic(NewTopic::new(&topic, 3)).await {
        Ok(()) => println!("created topic {topic}"),
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }

    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..count {
        let record = ProducerRecord::new(&topic, format!("message {i}"))
            .key(format!("key-{}", i % 4))
            .header("source", "meridian-client example");
        deliveries.push(producer.send(record).await?);
    }
    producer.flush().await?;
    for delivery in deliveries {
        let metadata = delivery.await?;
        println!(
            "{}/{} offset {} (timestamp {})",
            metadata.topic, metadata.partition, metadata.offset, metadata.timestamp
        );
    }
    client.close();
    Ok(())
}
