//! Clients trust the broker by pinned fingerprint or by its PEM certificate, and
//! refuse a wrong pin or a wrong name.

use meridian_client::{Client, ClientConfig, Trust};

use crate::harness::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_by_fingerprint_or_certificate_and_refuse_impostors() {
    let broker = TestBroker::start(&[]);
    let pinned = Client::connect(ClientConfig::new(
        broker.addr.clone(),
        Trust::parse_fingerprint(&broker.fingerprint).unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(
        pinned.broker_info().await.unwrap().cluster_id,
        "meridian-local"
    );

    let by_file = Client::connect(ClientConfig::new(
        broker.addr.clone(),
        Trust::CaFile(broker.cert_path()),
    ))
    .await
    .unwrap();
    by_file.admin().list_topics().await.unwrap();
    let pem = std::fs::read(broker.cert_path()).unwrap();
    Client::connect(ClientConfig::new(
        broker.addr.clone(),
        Trust::CaPem(pem.clone()),
    ))
    .await
    .unwrap();

    let Trust::Fingerprint(mut wrong) = Trust::parse_fingerprint(&broker.fingerprint).unwrap()
    else {
        unreachable!()
    };
    wrong[0] ^= 1;
    let err = Client::connect(ClientConfig::new(
        broker.addr.clone(),
        Trust::Fingerprint(wrong),
    ))
    .await
    .err();
    assert!(err.is_some(), "a wrong pin must be refused");

    let mut wrong_name = ClientConfig::new(broker.addr.clone(), Trust::CaPem(pem));
    wrong_name.server_name = "elsewhere.example".into();
    assert!(
        Client::connect(wrong_name).await.is_err(),
        "a certificate for another name must be refused"
    );
}
