//! The Redis URL's and MongoDB URI's passwords stay out of `runner up --help` and of `Debug`.

use clap::Parser;
use runner::Options;
use testkit::{SECRET_PASSWORD, assert_help_hides, assert_no_password};

#[test]
fn help_does_not_show_the_connection_urls() {
    assert_help_hides(env!("CARGO_BIN_EXE_runner"), Some("up"), &["REDIS_URL", "MONGODB_URI"]);
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

#[test]
fn the_options_debug_shows_the_servers_not_the_passwords() {
    let redis = format!("redis://:{SECRET_PASSWORD}@10.0.0.7:6379/0");
    let mongodb = format!("mongodb://weather:{SECRET_PASSWORD}@10.0.0.8:27017");
    let cli = Cli::try_parse_from(["runner", "--redis-url", &redis, "--mongodb-uri", &mongodb]).unwrap();
    assert_eq!(cli.options.stack.secret("REDIS_URL").unwrap(), redis, "the functions get the URL as it was");
    assert_eq!(cli.options.stack.secret("MONGODB_URI").unwrap(), mongodb);
    let shown = format!("{:?}", cli.options);
    assert!(
        shown.contains("redis://***@10.0.0.7:6379/0") && shown.contains("mongodb://***@10.0.0.8:27017"),
        "{shown}"
    );
    assert_no_password(&shown);
}
