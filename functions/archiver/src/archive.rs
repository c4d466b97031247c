//! The archive: one document per tweet in `weather.tweets`, `_id` = event id, so a redelivered
//! event meets a duplicate-key error, which means "already archived".

use common::event::Received;
use mongodb::{
    Client, Collection,
    bson::{self, Document, doc},
    error::{ErrorKind, WriteFailure},
    options::ClientOptions,
};
use std::{future::IntoFuture, time::Duration};
use tracing::Instrument;

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Clone)]
pub struct Archive {
    tweets: Collection<Document>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    Inserted,
    Duplicate,
}

impl Archive {
    /// Parses the URI; the client connects on first use, so archiver starts while MongoDB is down.
    pub async fn new(config: &crate::Config) -> mongodb::error::Result<Archive> {
        let mut options = ClientOptions::parse(&config.mongodb_uri).await?;
        let timeout = Duration::from_millis(config.timeout_ms);
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options.app_name = Some("archiver".into());
        let client = Client::with_options(options)?;
        Ok(Archive { tweets: client.database(&config.database).collection(&config.collection) })
    }

    pub async fn insert(&self, event: &Received) -> mongodb::error::Result<Archived> {
        let span = tracing::info_span!(
            "insert",
            otel.name = %format!("insert {}", self.tweets.name()),
            otel.kind = "client",
            db.system.name = "mongodb",
            db.namespace = %self.tweets.namespace().db,
            db.collection.name = %self.tweets.name(),
            db.operation.name = "insert",
        );
        match self.tweets.insert_one(document(event)).into_future().instrument(span).await {
            Ok(_) => Ok(Archived::Inserted),
            Err(e) if is_duplicate(&e) => Ok(Archived::Duplicate),
            Err(e) => Err(e),
        }
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
}

/// The archived document: the tweet, its event time, its Kafka position and its trace id.
pub fn document(event: &Received) -> Document {
    let mut d = doc! {
        "_id": &event.id,
        "texto": &event.tweet.texto,
        "pais": &event.tweet.pais,
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
