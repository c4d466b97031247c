//! The archive: one document per tweet in `weather.tweets`, `_id` = event id, so a redelivered
//! event meets a duplicate-key error, which means "already archived".
//!
//! Inserts are committed in groups: requests that arrive while one `insertMany` is running wait
//! for the next, which takes them all (up to [`MAX_BATCH`]) in one unordered `insertMany` — one
//! SQLite transaction in FerretDB instead of one per tweet, and no added wait when traffic is
//! light. Each request still learns its own outcome (inserted, duplicate or error) and answers
//! 2xx only after its document is written.
//!
//! Every write asks for `w: majority, j: true` (whatever the URI says): MongoDB acknowledges it
//! only once a majority of the replica set has it in its on-disk journal, so a 2xx survives a
//! crash and a failover; on a standalone server `majority` is the one server. FerretDB accepts
//! the write concern and ignores it: each insert is a transaction of its backend (SQLite in WAL
//! mode with SQLite's default `synchronous=FULL` on the local stack), durable when acknowledged.
//! A write-concern error (not journaled in time, `wtimeout` = `MONGODB_TIMEOUT_MS`) is a 503:
//! the retry meets the duplicate key once the write did land.
//!
//! Every `insertMany` is bounded by the operation timeout (`MONGODB_TIMEOUT_MS`): a server that
//! stops answering (SIGSTOP, a hung disk) fails the group with an error, so each waiting
//! request answers 503 in bounded time and KafkaSource retries it, instead of the one writer
//! and every request behind it hanging.

use common::{
    event::Received,
    sink::{Applied, Failure, Store},
};
use mongodb::{
    Client, Collection,
    bson::{self, Document, doc},
    error::{Error, ErrorKind},
    options::{Acknowledgment, ClientOptions, WriteConcern},
};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;
/// Most documents in one `insertMany`.
pub const MAX_BATCH: usize = 256;

#[derive(Clone)]
pub struct Archive {
    pending: mpsc::Sender<Pending>,
    database: String,
    collection: String,
    /// `insert <collection>`, the `insert` span's name, built once.
    insert_name: String,
    timeout: Duration,
}

struct Pending {
    document: Document,
    reply: oneshot::Sender<Result<Applied, Error>>,
}

impl Archive {
    /// Parses the URI; the client connects on first use, so archiver starts while MongoDB is down.
    pub async fn new(config: &crate::Config) -> mongodb::error::Result<Archive> {
        Archive::with_options(client_options(config).await?, config)
    }

    /// An archive on a client of `options` (see [`client_options`]).
    pub fn with_options(options: ClientOptions, config: &crate::Config) -> mongodb::error::Result<Archive> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = Client::with_options(options)?;
        let tweets = client.database(&config.database).collection(&config.collection);
        let (pending, queue) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_batches(tweets, queue, timeout));
        Ok(Archive {
            pending,
            database: config.database.clone(),
            collection: config.collection.clone(),
            insert_name: format!("insert {}", config.collection),
            timeout,
        })
    }

    pub async fn insert(&self, event: &Received) -> mongodb::error::Result<Applied> {
        let span = tracing::info_span!(
            "insert",
            otel.name = %self.insert_name,
            otel.kind = "client",
            db.system.name = "mongodb",
            db.namespace = %self.database,
            db.collection.name = %self.collection,
            db.operation.name = "insert",
        );
        let (reply, outcome) = oneshot::channel();
        let gone = || Error::custom("the archive's writer stopped");
        // Queued behind a hung group, a request waits at most two operation timeouts.
        let waited = tokio::time::timeout(self.timeout * 2, async {
            self.pending.send(Pending { document: document(event), reply }).await.map_err(|_| gone())?;
            outcome.await.map_err(|_| gone())?
        })
        .instrument(span)
        .await;
        waited.unwrap_or_else(|_| Err(Error::custom("the archive's writer did not answer in time")))
    }
}

impl Store for Archive {
    type Error = Error;

    async fn apply(&self, event: &Received) -> Result<Applied, Error> {
        self.insert(event).await
    }

    /// Every archiver error may pass (MongoDB down, slow, or not yet acknowledging the write).
    fn failure(_: &Error) -> Failure {
        Failure::Unavailable("mongodb")
    }
}

/// The client's options: the URI's, with archiver's timeouts and write concern.
pub async fn client_options(config: &crate::Config) -> mongodb::error::Result<ClientOptions> {
    let mut options = ClientOptions::parse(config.mongodb_uri.expose_secret()).await?;
    let timeout = Duration::from_millis(config.timeout_ms);
    options.server_selection_timeout = Some(timeout);
    options.connect_timeout = Some(timeout);
    options.app_name = Some("archiver".into());
    options.write_concern = Some(journaled(timeout));
    Ok(options)
}

/// The write concern of every insert: acknowledged by a majority, in their journals, within
/// `timeout`.
pub fn journaled(timeout: Duration) -> WriteConcern {
    WriteConcern::builder().w(Acknowledgment::Majority).journal(true).w_timeout(timeout).build()
}

/// Writes waiting documents in groups until every [`Archive`] is dropped.
async fn write_batches(tweets: Collection<Document>, mut queue: mpsc::Receiver<Pending>, timeout: Duration) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let documents: Vec<&Document> = batch.iter().map(|p| &p.document).collect();
        let result = match tokio::time::timeout(timeout, tweets.insert_many(documents).ordered(false)).await {
            Ok(result) => result,
            Err(_) => Err(Error::custom(format!("insertMany took longer than {} ms", timeout.as_millis()))),
        };
        for (index, pending) in batch.drain(..).enumerate() {
            let _ = pending.reply.send(outcome(&result, index));
        }
    }
}

/// What an unordered `insertMany` result means for the document at `index`.
fn outcome<T>(result: &Result<T, Error>, index: usize) -> Result<Applied, Error> {
    let Err(error) = result else { return Ok(Applied::New) };
    let ErrorKind::InsertMany(failure) = &*error.kind else { return Err(error.clone()) };
    if failure.write_concern_error.is_some() {
        return Err(error.clone());
    }
    match failure.write_errors.iter().flatten().find(|e| e.index == index) {
        None => Ok(Applied::New),
        Some(e) if e.code == DUPLICATE_KEY => Ok(Applied::Duplicate),
        Some(_) => Err(error.clone()),
    }
}

/// The archived document: the tweet, its event time, its Kafka position and its trace id.
pub fn document(event: &Received) -> Document {
    let mut d = doc! {
        "_id": &event.id,
        "texto": &event.tweet.texto,
        "pais": event.tweet.pais,
        "pais_codigo": event.tweet.pais_codigo,
        "clima": event.tweet.clima.as_str(),
        "archived_at": bson::DateTime::now(),
    };
    if let Some(time) = event.time {
        d.insert("time", bson::DateTime::from_millis(time.timestamp_millis()));
    }
    if let Some(pos) = event.position {
        d.insert("partition", pos.partition);
        d.insert("offset", pos.offset);
    }
    if let Some(trace_id) = &event.trace_id {
        d.insert("trace_id", trace_id);
    }
    d
}
