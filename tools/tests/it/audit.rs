//! The audit against a real run: what ingest accepted, Kafka's records, the archive and the
//! counts read back, and each kind of difference found by id.

use crate::{pipeline_args, stack};
use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use common::tweet::Tweet;
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use std::time::Duration;
use tools::{
    audit::{Audit, Ids},
    bench::closed_loop,
    pipeline::Pipeline,
    state::State,
};

/// Writes tweet `i` straight to the topic as producer would, with a fresh id no client asked for.
async fn write_unasked(state: &State, i: usize) -> String {
    let tweet = Tweet::from_json(testkit::tweet(i).to_string().as_bytes()).unwrap();
    let id = common::event::event_id("");
    let record = MessageRecord::from_event(common::event::tweet_event(&id, "/it/audit", &tweet)).unwrap();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &state.stack.kafka_brokers).create().unwrap();
    let out = FutureRecord::to(&state.topic).key(tweet.pais.as_bytes()).message_record(&record);
    producer.send(out, Timeout::After(Duration::from_secs(10))).await.expect("Kafka takes the record");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_what_no_client_sent_and_what_the_archive_lost_by_id() {
    let stack = stack();
    let state = State::new(&stack).unwrap();
    let pipeline = Pipeline::start(&stack, &pipeline_args(), &[]).await.expect("the runner starts");
    let body = async {
        let load = closed_loop(&pipeline.ingest_url(), 20, 4, Duration::from_secs(60)).await.unwrap();
        let ledger = load.ledger().unwrap();
        state.wait_delivered(Duration::from_secs(60)).await.unwrap();
        let audit = Audit::of(&state, &ledger).await.unwrap();
        assert!(audit.exact(), "{:?}", audit.differences());
        assert_eq!((audit.requests, audit.accepted, audit.in_kafka, audit.archived), (20, 20, 20, 20));

        // A record no client was told about, delivered like any other: counted, archived, and
        // unexplained.
        let unasked = write_unasked(&state, 3).await;
        state.wait_delivered(Duration::from_secs(60)).await.unwrap();
        let audit = Audit::of(&state, &ledger).await.unwrap();
        assert_eq!(audit.unexplained_in_kafka, Ids { count: 1, first: vec![unasked.clone()] });
        assert_eq!((audit.missing(), audit.extra(), audit.counted), (0, 1, 21));

        // An accepted tweet gone from the archive: missing, by its id.
        let gone = &load.accepted[0].id;
        let archive = state.archive().await.unwrap();
        archive.delete_one(mongodb::bson::doc! { "_id": gone }).await.unwrap();
        let audit = Audit::of(&state, &ledger).await.unwrap();
        assert_eq!(audit.missing_from_archive, Ids { count: 1, first: vec![gone.clone()] });
        assert_eq!((audit.missing(), audit.extra()), (1, 1));
    };
    testkit::with_cleanup(body, async {
        let _ = state.archive().await.unwrap().drop().await;
        let _ = state.keys.clear(&mut state.redis().await.unwrap()).await;
    })
    .await;
    pipeline.stop().await;
}
