//! Configuration keys, each defined once.
//!
//! A service declares its section with [`settings!`](crate::settings): one line per key gives
//! its field, type, default, doc (the help text), value name and how it may be set. From that
//! one definition come the section's struct and `Default`, the command-line flag
//! (`--orders-database-url`), the environment variable (`BOOKSTORE_ORDERS_DATABASE_URL`), the
//! file key (`[orders] database_url`) and the help line with its default; the binary assembles
//! the sections (`crates/bookstore/src/config.rs`) and never repeats a key.
//!
//! A key is set in one of three ways:
//! - `flag`: anywhere (file, environment, command line);
//! - `env`: file or environment only, for keys a subcommand spells as a switch of its own
//!   (`up --no-seed`);
//! - `secret`: file or environment only (a flag would show in process lists), and redacted when
//!   the configuration is printed;
//! - `file`: the file only, for tables and lists (routes) that a flag cannot spell.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How a key may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// File, environment and command line.
    Flag,
    /// File and environment only.
    Env,
    /// File and environment only; redacted when printed.
    Secret,
    /// The file only.
    File,
}

/// One configuration key, as its section declares it.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The field in its section (`database_url`), the key under `[section]` in the file.
    pub field: &'static str,
    /// The flat name: the flag without `--` and with `_` for `-`, and the environment variable
    /// without `BOOKSTORE_` (`orders_database_url`). Unique across every section.
    pub flat: &'static str,
    /// What the value is, for help text (`URL`, `MS`, `ADDR`).
    pub value_name: &'static str,
    /// The doc comment of the field: the help text.
    pub help: &'static str,
    pub source: Source,
}

/// A section of the configuration: a struct whose every field is a [`Key`].
pub trait Section:
    Serialize + DeserializeOwned + Default + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// The table in the file (`orders`); empty for the keys at the top of the file.
    const NAME: &'static str;
    /// Every key, in declaration order.
    const KEYS: &'static [Key];
    /// Checks what types alone cannot; errors name the key.
    fn validate(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Declares a configuration section: the struct, its `Default`, and its [`Section`] keys; an
/// optional `validate(f)` gives a `fn(&Self) -> anyhow::Result<()>` for what types cannot
/// check. `as grpc_service(port = .., grpc = .., url = .., database_url = .., advertise_addr = ..,
/// weight = ..)` adds the keys every gRPC service has (listen address, URL, database, what it
/// registers; flat names as given) and its
/// [`Endpoint`](crate::service::Endpoint).
///
/// ```ignore
/// bookstore_platform::settings! {
///     /// The books service's settings (`[books]`).
///     pub struct Settings in "books", validate(check) {
///         /// Where the books service listens for gRPC.
///         grpc: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap(), flag books_grpc "ADDR";
///         /// Its URL, for processes that do not run it.
///         url: Option<String> = None, flag books_url "URL";
///     }
/// }
/// ```
#[macro_export]
macro_rules! settings {
    // A gRPC service's section: its listen address, its URL for processes that do not run it,
    // and its database, with their checks and its `Endpoint`, then its own keys.
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $section:literal as grpc_service(
            port = $port:literal, grpc = $grpc:ident, url = $url:ident, database_url = $database_url:ident,
            advertise_addr = $advertise_addr:ident, weight = $weight:ident
        ) $(, validate($check:expr))? {
            $($keys:tt)*
        }
    ) => {
        $crate::settings! {
            $(#[$meta])*
            pub struct $name in $section, validate(|s: &$name| -> ::anyhow::Result<()> {
                if let Some(url) = &s.url {
                    $crate::discovery::Source::parse(url)
                        .map_err(|e| ::anyhow::anyhow!("invalid configuration: {}: {e:#}", stringify!($url)))?;
                }
                if let Some(url) = &s.database_url {
                    $crate::settings::check_database_url(stringify!($database_url), url)?;
                }
                if let Some(addr) = &s.advertise_addr {
                    $crate::settings::check_host_port(stringify!($advertise_addr), addr)?;
                }
                ::anyhow::ensure!(
                    (1..=$crate::discovery::MAX_WEIGHT).contains(&s.weight),
                    "invalid configuration: {} must be from 1 to {}", stringify!($weight), $crate::discovery::MAX_WEIGHT
                );
                $(($check)(s)?;)?
                Ok(())
            }) {
                #[doc = concat!("Where the ", $section, " service listens for gRPC.")]
                grpc: ::std::net::SocketAddr = ::std::net::SocketAddr::from(([127, 0, 0, 1], $port)), flag $grpc "ADDR";
                #[doc = concat!("Where other processes find the ", $section, " service: http://host:port, a comma-separated list (each with ?weight=N), or dns://name:port [default: http://<", stringify!($grpc), ">]")]
                url: Option<String> = None, flag $url "URL";
                #[doc = concat!("The ", $section, " database, postgres://... or sqlite:... [default: <data-dir>/", $section, ".db]")]
                database_url: Option<String> = None, flag $database_url "URL";
                #[doc = concat!("host:port other processes dial to reach this ", $section, " (registered in etcd) [default: the bound address]")]
                advertise_addr: Option<String> = None, flag $advertise_addr "HOST:PORT";
                #[doc = concat!("This ", $section, " replica's share of traffic, as registered in etcd")]
                weight: u32 = 1, flag $weight "N";
                $($keys)*
            }
        }

        impl $crate::service::Endpoint for $name {
            fn listen(&self) -> ::std::net::SocketAddr {
                self.grpc
            }
            fn url(&self) -> Option<&str> {
                self.url.as_deref()
            }
            fn database_url(&self) -> Option<&str> {
                self.database_url.as_deref()
            }
            fn announce(&self) -> Option<(Option<&str>, u32)> {
                Some((self.advertise_addr.as_deref(), self.weight))
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $section:literal $(, validate($check:expr))? {
            $(
                $(#[doc = $doc:expr])+
                $field:ident : $ty:ty = $default:expr, $source:ident $flat:ident $value_name:literal;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $(
                $(#[doc = $doc])+
                pub $field: $ty,
            )*
        }

        impl ::std::default::Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl $crate::settings::Section for $name {
            const NAME: &'static str = $section;
            const KEYS: &'static [$crate::settings::Key] = &[
                $(
                    $crate::settings::Key {
                        field: stringify!($field),
                        flat: stringify!($flat),
                        value_name: $value_name,
                        help: $crate::settings::__doc(&[$($doc),+]),
                        source: $crate::__settings_source!($source),
                    },
                )*
            ];
            #[allow(unreachable_code)]
            fn validate(&self) -> ::anyhow::Result<()> {
                $(return ($check)(self);)?
                Ok(())
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __settings_source {
    (flag) => {
        $crate::settings::Source::Flag
    };
    (env) => {
        $crate::settings::Source::Env
    };
    (secret) => {
        $crate::settings::Source::Secret
    };
    (file) => {
        $crate::settings::Source::File
    };
}

/// The first line of a doc comment, without the space rustdoc leaves after `///`: a help line.
/// (`const`, so keys stay `'static` data; a longer doc stays in the code and the README.)
#[doc(hidden)]
pub const fn __doc(lines: &[&'static str]) -> &'static str {
    let mut bytes = lines[0].as_bytes();
    while let [b' ', rest @ ..] = bytes {
        bytes = rest;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => lines[0],
    }
}

/// Checks that `url`, the value of `key`, starts with one of `schemes` (`"http"` allows
/// `http://`), and parses as a URL.
pub fn check_url(key: &str, url: &str, schemes: &[&str]) -> anyhow::Result<()> {
    let ok = schemes.iter().any(|s| url.strip_prefix(s).is_some_and(|rest| rest.starts_with(':')));
    anyhow::ensure!(ok, "invalid configuration: {key} must be a {} URL, not {url:?}", schemes.join(" or "));
    url::Url::parse(url).map_err(|e| anyhow::anyhow!("invalid configuration: {key}: {e}"))?;
    Ok(())
}

/// Checks that `value`, the value of `key`, is `host:port`.
pub fn check_host_port(key: &str, value: &str) -> anyhow::Result<()> {
    let ok = url::Url::parse(&format!("http://{value}")).is_ok_and(|u| u.port().is_some() && u.path() == "/");
    anyhow::ensure!(ok, "invalid configuration: {key} must be host:port, not {value:?}");
    Ok(())
}

/// Checks that `url`, the value of `key`, names a database this kit can open.
pub fn check_database_url(key: &str, url: &str) -> anyhow::Result<()> {
    crate::db::Backend::from_url(url).map_err(|e| anyhow::anyhow!("invalid configuration: {key}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::settings! {
        /// A section for the tests.
        pub struct Example in "example" {
            /// Where it listens.
            /// More words that stay out of the help line.
            listen: String = "127.0.0.1:1".into(), flag example_listen "ADDR";
            /// A secret.
            token: Option<String> = None, secret example_token "TOKEN";
        }
    }

    #[test]
    fn one_definition_gives_struct_default_and_keys() {
        let example = Example::default();
        assert_eq!(example.listen, "127.0.0.1:1");
        assert_eq!(Example::NAME, "example");
        let keys: Vec<_> = Example::KEYS.iter().map(|k| (k.field, k.flat, k.help, k.source)).collect();
        assert_eq!(
            keys,
            [
                ("listen", "example_listen", "Where it listens.", Source::Flag),
                ("token", "example_token", "A secret.", Source::Secret)
            ]
        );
    }

    #[test]
    fn urls_are_checked_by_scheme_and_shape() {
        assert!(check_url("k", "postgres://u@h/db", &["postgres", "sqlite"]).is_ok());
        assert!(check_url("k", "sqlite:///tmp/x.db", &["postgres", "sqlite"]).is_ok());
        let err = check_url("books_url", "ftp://x", &["http", "https"]).unwrap_err().to_string();
        assert!(err.contains("books_url") && err.contains("http or https"), "{err}");
        assert!(check_database_url("k", "postgresql://u@h/db").is_ok());
        let err = check_database_url("books_database_url", "mysql://h/db").unwrap_err().to_string();
        assert!(err.contains("books_database_url"), "{err}");
    }
}
