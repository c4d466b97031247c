//! Connection URLs that may hold credentials (`REDIS_URL`, `MONGODB_URI`): a [`SecretUrl`] shows
//! only its [redacted](SecretUrl::redacted) form through `Debug` and `Display`, so a config struct
//! can derive `Debug` and a log line can name the server without its password. The clear text
//! is read once, with [`SecretUrl::expose_secret`], where a client is built from it; it is wiped
//! from memory when dropped (`secrecy`). The `clap` arguments carrying one set
//! `hide_env_values = true`, so `--help` does not print the variable's value either.

use secrecy::{ExposeSecret, SecretString};
use std::{convert::Infallible, fmt, str::FromStr};

/// A connection URL whose user information and query may carry credentials.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    /// The URL itself, credentials included: only to hand it to a client.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with what may be secret replaced by `***`: its user information (name and
    /// password) and its query (redis-rs takes `?pass=…` for Unix sockets); the scheme, hosts,
    /// ports and path stay, so a log line still says which server.
    ///
    /// Passwords hold `@`, `:` and `/` unencoded more often than clients refuse them, so the
    /// user information ends at the *last* `@` before the query (a generic URL parser would not
    /// help: it ends the authority at the first `/` and takes no MongoDB `host1,host2` list).
    /// When an `@` follows the first `?` or `#`, either the query holds one or the password
    /// holds a `?` or `#`, and nothing tells which: then only the scheme is shown. Hiding too
    /// much at times, it never shows a part of either.
    pub fn redacted(&self) -> String {
        redact(self.expose_secret())
    }
}

fn redact(url: &str) -> String {
    let scheme = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    };
    let Some((scheme, rest)) = url.split_once("://").filter(|(s, _)| scheme(s)) else {
        // Not a URL this knows how to read: nothing of it is shown.
        return "***".to_owned();
    };
    let (before_query, query) = match rest.find(['?', '#']) {
        Some(at) if rest[at..].contains('@') => return format!("{scheme}://***"),
        Some(at) => (&rest[..at], "?***"),
        None => (rest, ""),
    };
    match before_query.rsplit_once('@') {
        Some((_, address)) => format!("{scheme}://***@{address}{query}"),
        None => format!("{scheme}://{before_query}{query}"),
    }
}

impl FromStr for SecretUrl {
    type Err = Infallible;

    /// Any text: the client that connects with it says what is wrong with it.
    fn from_str(url: &str) -> Result<SecretUrl, Infallible> {
        Ok(SecretUrl(url.into()))
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> SecretUrl {
        SecretUrl(url.into())
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> SecretUrl {
        SecretUrl(url.into())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::SecretUrl;

    /// A password as people write them: `@`, `:` and `/` in it, unencoded.
    const PASSWORD: &str = "Sx7q@Kk2:Qz9/zTj";

    #[test]
    fn the_password_is_never_shown_whatever_it_holds() {
        let odd = format!("{PASSWORD}?vW4#pLm8@rT5"); // `?`, `#` and `@` after them too
        let cases = [
            (format!("redis://:{PASSWORD}@redis.weather:6379/0"), "redis://***@redis.weather:6379/0"),
            (format!("rediss://default:{PASSWORD}@10.0.0.7:6380"), "rediss://***@10.0.0.7:6380"),
            (
                format!("mongodb://weather:{PASSWORD}@m1:27017,m2:27017/weather?replicaSet=rs0"),
                "mongodb://***@m1:27017,m2:27017/weather?***",
            ),
            (
                format!("mongodb+srv://weather:{PASSWORD}@cluster0.example.net/?retryWrites=true"),
                "mongodb+srv://***@cluster0.example.net/?***",
            ),
            (format!("redis+unix:///run/redis.sock?db=1&pass={PASSWORD}"), "redis+unix://***"),
            ("redis+unix:///run/redis.sock?db=1&pass=Sx7q:Kk2".into(), "redis+unix:///run/redis.sock?***"),
            (format!("redis://:{odd}@redis.weather:6379/0"), "redis://***"),
            (format!("redis://:{PASSWORD}@redis.weather/0?x=@{odd}"), "redis://***"),
            (format!("{PASSWORD}@host"), "***"),
            (format!("user:{PASSWORD}://@host"), "***"),
        ];
        for (url, redacted) in cases {
            let secret: SecretUrl = url.parse().unwrap();
            assert_eq!(secret.redacted(), redacted, "{url}");
            assert_eq!(secret.to_string(), redacted);
            assert_eq!(format!("{secret:?}"), format!("SecretUrl({redacted:?})"));
            for shown in [secret.to_string(), format!("{secret:?}"), format!("{secret:#?}")] {
                for part in odd.split(['@', ':', '/', '?', '#']) {
                    assert!(!shown.contains(part), "{part:?} of the password in {shown:?}");
                }
            }
            assert_eq!(secret.expose_secret(), url, "the client gets the URL as it was");
        }
    }

    #[test]
    fn a_url_without_credentials_is_shown_whole() {
        let secret = SecretUrl::from("redis://127.0.0.1:6379/0");
        assert_eq!(secret.to_string(), "redis://127.0.0.1:6379/0");
        assert_eq!(
            SecretUrl::from("mongodb://127.0.0.1:27017".to_owned()).redacted(),
            "mongodb://127.0.0.1:27017"
        );
    }
}
