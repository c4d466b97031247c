//! MongoDB (FerretDB): string `_id`s, the duplicate-key error the sinks rely on, and reading back.

use crate::{closed_port, env_or, unique, with_cleanup};
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use std::time::Duration;

/// Bound on finding the server and on connecting to it.
const TIMEOUT: Duration = Duration::from_secs(3);
/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// A client to `uri` whose server has answered `ping`.
async fn mongo_ready(uri: &str) -> Result<Client, String> {
    let down = |err: String| format!("MongoDB is down at {uri}: {err} — start it with `dev/stack up`");
    let mut options = ClientOptions::parse(uri).await.map_err(|e| down(e.to_string()))?;
    options.server_selection_timeout = Some(TIMEOUT);
    options.connect_timeout = Some(TIMEOUT);
    let client = Client::with_options(options).map_err(|e| down(e.to_string()))?;
    client.database("admin").run_command(doc! { "ping": 1 }).await.map_err(|e| down(e.to_string()))?;
    Ok(client)
}

async fn mongo() -> Client {
    mongo_ready(&env_or("MONGODB_URI", "mongodb://127.0.0.1:27017"))
        .await
        .unwrap_or_else(|msg| panic!("{msg}"))
}

async fn drop_database(db: Database) {
    let _ = db.drop().await;
}

#[tokio::test]
async fn a_second_insert_of_an_id_is_a_duplicate_key_error() {
    let client = mongo().await;
    let db = client.database(&unique("it_"));
    let body = {
        let db = db.clone();
        async move {
            let tweets = db.collection::<Document>("tweets");
            let tweet =
                doc! { "_id": "tweet-42", "texto": "Hoy llueve", "pais": "Perú", "clima": "lluvioso" };
            tweets.insert_one(tweet.clone()).await.expect("first insert");

            let err = tweets.insert_one(tweet).await.expect_err("second insert of the same _id");
            match *err.kind {
                ErrorKind::Write(WriteFailure::WriteError(ref e)) => {
                    assert_eq!(e.code, DUPLICATE_KEY, "{err}")
                }
                _ => panic!("expected a duplicate-key write error, got {err}"),
            }

            let found =
                tweets.find_one(doc! { "_id": "tweet-42" }).await.expect("find").expect("the document");
            assert_eq!(found.get_str("texto"), Ok("Hoy llueve"));
            assert_eq!(found.get_str("pais"), Ok("Perú"));
            assert_eq!(found.get_str("clima"), Ok("lluvioso"));
            assert_eq!(tweets.count_documents(doc! {}).await.expect("count"), 1);
        }
    };
    with_cleanup(body, drop_database(db)).await;
}

#[tokio::test]
async fn a_down_mongodb_is_reported_by_name() {
    let uri = format!("mongodb://127.0.0.1:{}", closed_port());
    let Err(err) = mongo_ready(&uri).await else {
        panic!("nothing listens on a released port, yet it answered")
    };
    assert!(err.starts_with(&format!("MongoDB is down at {uri}: ")), "{err}");
}
