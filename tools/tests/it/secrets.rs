//! The Redis URL's and MongoDB URI's passwords stay out of `tools --help`.

#[test]
fn help_does_not_show_the_connection_urls() {
    testkit::assert_help_hides(env!("CARGO_BIN_EXE_tools"), None, &["REDIS_URL", "MONGODB_URI"]);
}
