//! Property tests through the router: whatever the body, the answer is a client error with a JSON
//! error naming a known field or none — unless the contract accepted the tweet, which then goes
//! to the producer (unreachable here, so 503). Never a 500, never a panic.

use crate::{Reply, app_without_producer, post_json};
use common::{
    testing::{bytes, json, tweet_body},
    tweet::Tweet,
};
use proptest::prelude::*;

fn check(reply: &Reply, body: &[u8]) -> Result<(), TestCaseError> {
    let accepted = Tweet::from_json(body).is_ok();
    if accepted {
        prop_assert_eq!(reply.status.as_u16(), 503, "an accepted tweet reaches the producer");
    } else {
        prop_assert_eq!(reply.status.as_u16(), 400, "{}", reply.json);
        let field = &reply.json["field"];
        prop_assert!(field.is_null() || ["texto", "pais", "clima"].contains(&field.as_str().unwrap_or("?")));
        prop_assert!(reply.json["error"].as_str().is_some_and(|e| !e.is_empty() && e.len() < 1024));
    }
    Ok(())
}

fn run(body: Vec<u8>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply = runtime.block_on(async { post_json(&app_without_producer(), body.clone()).await });
    check(&reply, &body)
}

proptest! {
    // Each case is one in-process request (and a refused connection when accepted).
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_400_never_5xx(body in bytes()) {
        run(body)?;
    }

    #[test]
    fn arbitrary_json_is_400_unless_it_is_a_tweet(value in json()) {
        run(value.to_string().into_bytes())?;
    }

    #[test]
    fn tweet_shaped_bodies_are_400_or_reach_the_producer((body, _) in tweet_body()) {
        run(body.into_bytes())?;
    }
}
