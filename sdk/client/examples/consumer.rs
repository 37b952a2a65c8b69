//! Reads a topic from the beginning and prints every record until caught up.
//!
//! ```text
//! cargo run -p meridian-client --example consumer -- 127.0.0.1:9092 sha256:… [topic]
//! MERIDIAN_CA=broker-cert.pem cargo run -p meridian-client --example consumer
//! ```

mod common;

use std::time::Duration;

use meridian_client::{ConsumerConfig, Offset};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let topic = args.get(2).cloned().unwrap_or_else(|| "example".into());
    let client = common::connect(&args).await?;

    let mut consumer = client.consumer(ConsumerConfig::default());
    let partitions = consumer.assign_all(&topic).await?;
    for partition in &partitions {
        consumer.seek(&topic, *partition, Offset::Earliest).await?;
    }
    let mut n_records = 0u64;
    loop {
        let records = consumer.poll(Duration::from_secs(2)).await?;
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
        n_records += records.len() as u64;
        let caught_up = partitions.iter().all(|p| {
            match (
                consumer.position(&topic, *p),
                consumer.high_watermark(&topic, *p),
            ) {
                (Some(position), Some(high_watermark)) => position >= high_watermark,
                _ => false,
            }
        });
        if records.is_empty() && caught_up {
            break;
        }
    }
    println!("read {n_records} records from {topic}");
    client.close();
    Ok(())
}
