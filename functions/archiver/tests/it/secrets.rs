//! The MongoDB URI's credentials stay out of `archiver --help` and of the config's `Debug`.

use archiver::Config;
use clap::Parser;
use testkit::{SECRET_PASSWORD, assert_help_hides, assert_no_password};

#[test]
fn help_does_not_show_the_mongodb_uri() {
    assert_help_hides(env!("CARGO_BIN_EXE_archiver"), None, &["MONGODB_URI"]);
}

#[test]
fn the_config_debug_shows_the_servers_not_the_password() {
    let uri = format!("mongodb://weather:{SECRET_PASSWORD}@m1:27017,m2:27017/?replicaSet=rs0");
    let config = Config::try_parse_from(["archiver", "--mongodb-uri", &uri]).unwrap();
    assert_eq!(config.mongodb_uri.expose_secret(), uri, "the client gets the URI as it was");
    let shown = format!("{config:?}");
    assert!(shown.contains("mongodb://***@m1:27017,m2:27017/?***"), "{shown}");
    assert_no_password(&shown);
}
