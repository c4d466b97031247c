//! Settings, from the environment only (`archiver --help` lists them).

use common::secret::SecretUrl;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "archiver", about = "Receives tweet CloudEvents and archives each once in MongoDB")]
pub struct Config {
    /// Port to serve HTTP on; Knative sets it.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// MongoDB connection string; put credentials in it from a secret. Logs and `--help` show
    /// it without them.
    #[arg(long, env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017", hide_env_values = true)]
    pub mongodb_uri: SecretUrl,
    /// Database of the archive.
    #[arg(long, env = "MONGODB_DATABASE", default_value = "weather")]
    pub database: String,
    /// Collection of the archive.
    #[arg(long, env = "MONGODB_COLLECTION", default_value = "tweets")]
    pub collection: String,
    /// How long to look for a usable server, and how long one insert may take, before the
    /// event gets 503, in milliseconds.
    #[arg(long, env = "MONGODB_TIMEOUT_MS", default_value_t = 2_000)]
    pub timeout_ms: u64,
}
