//! The Redis URL's password stays out of `counter --help` and of the config's `Debug`.

use clap::Parser;
use counter::Config;
use testkit::{SECRET_PASSWORD, assert_help_hides, assert_no_password};

#[test]
fn help_does_not_show_the_redis_url() {
    assert_help_hides(env!("CARGO_BIN_EXE_counter"), None, &["REDIS_URL"]);
}

#[test]
fn the_config_debug_shows_the_server_not_the_password() {
    let url = format!("redis://default:{SECRET_PASSWORD}@10.0.0.7:6379/0");
    let config = Config::try_parse_from(["counter", "--redis-url", &url]).unwrap();
    assert_eq!(config.redis_url.expose_secret(), url, "the client gets the URL as it was");
    let shown = format!("{config:?}");
    assert!(shown.contains("redis://***@10.0.0.7:6379/0"), "{shown}");
    assert_no_password(&shown);
}
