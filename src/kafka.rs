//! Kafka client settings, shared by every Kafka client of Stratus (source consumers, the
//! producer of sinks, dead letters and late rows).
//!
//! In: the brokers and [`KafkaProperties`] — librdkafka properties a user adds, for security
//! (`security.protocol`, `sasl.*`, `ssl.*`) or tuning — from the worker (`--kafka-config FILE`,
//! a Java-style properties file such as Kafka's own tools take) and from the pipeline file
//! (`kafka: {properties: …}`), the pipeline's winning. Out: a [`KafkaConnection`] that makes
//! consumer and producer configurations.
//!
//! A value may be `${env:NAME}` or `${file:PATH}` (the file's content, trimmed), resolved when
//! the connection is made. A secret (a property whose name holds `password`, `secret`,
//! `passphrase`, `private.key` or `key.pem`, and `sasl.oauthbearer.config`) may not be written literally in a pipeline file, which is shared and
//! submitted; no secret is ever logged or echoed in an error.
//!
//! The Delta tables hold the offsets (see [`crate::sink::delta`]): consumers have auto-commit
//! off and start from the tables' offsets, or from the earliest offset for a partition the
//! tables have not seen; the run commits those offsets to the consumer group after the tables,
//! for lag tools only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaConfRes;

/// Properties Stratus sets itself because exactly-once delivery depends on them, with what
/// to do instead.
const OWNED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "give the brokers with --brokers or STRATUS_KAFKA_BROKERS",
    ),
    ("group.id", "set the source's `group`"),
    (
        "enable.auto.commit",
        "Stratus keeps offsets in the Delta tables",
    ),
    (
        "enable.auto.offset.store",
        "Stratus keeps offsets in the Delta tables",
    ),
    (
        "enable.idempotence",
        "Stratus's producer is always idempotent",
    ),
    ("acks", "Stratus's producer always waits for all replicas"),
    (
        "transactional.id",
        "Stratus does not use Kafka transactions",
    ),
    (
        "enable.partition.eof",
        "Stratus's sources take a partition's end as the sign that its silence is idleness",
    ),
    (
        "auto.offset.reset",
        "a partition the tables have not seen is read from its start, so nothing is skipped",
    ),
];

/// Whether `key` names a secret: never written in a pipeline file, never shown.
pub fn is_secret(key: &str) -> bool {
    [
        "password",
        "secret",
        "passphrase",
        "private.key",
        "key.pem",
        "jaas",
    ]
    .iter()
    .any(|s| key.contains(s))
        || key == "sasl.oauthbearer.config"
}

/// A problem with Kafka settings. Never holds a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    #[error("{}: cannot read the Kafka properties file: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {problem}", path.display())]
    File {
        path: PathBuf,
        line: usize,
        problem: PropertyError,
    },
    #[error("Kafka property `{key}`: {problem}")]
    Property { key: String, problem: PropertyError },
    #[error("cannot reach Kafka at {brokers}: {reason}")]
    Unreachable { brokers: String, reason: String },
    /// Reached, and refused: credentials or TLS. Trying again cannot help.
    #[error("cannot reach Kafka at {brokers}: {reason}")]
    Refused { brokers: String, reason: String },
}

/// What is wrong with one property. Never holds a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum PropertyError {
    /// Not `key=value` (the line is not shown: it may hold key material).
    #[error("expected `key=value` (one property a line; no continuation lines)")]
    NotAProperty,
    #[error("`{0}` is set twice")]
    Twice(String),
    #[error("`{key}` is set by Stratus: {why}")]
    Owned { key: String, why: &'static str },
    #[error(
        "`{0}` is a secret and may not be written in a pipeline file: write `${{env:NAME}}` or \
         `${{file:PATH}}` and give the value to the worker"
    )]
    LiteralSecret(String),
    #[error("`{0}` is not a reference Stratus knows: use `${{env:NAME}}` or `${{file:PATH}}`")]
    UnknownReference(String),
    #[error("the environment variable {0} is not set")]
    EnvUnset(String),
    #[error("cannot read {path}: {source}")]
    FileUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("librdkafka has no property `{0}` (see librdkafka's CONFIGURATION.md)")]
    Unknown(String),
    /// librdkafka's own words on a value that is no secret.
    #[error("{0}")]
    Invalid(String),
    #[error("the value of `{0}` is not valid")]
    InvalidSecret(String),
}

/// librdkafka properties as written, `${env:…}` and `${file:…}` references unresolved.
#[derive(Clone, Default, PartialEq)]
pub struct KafkaProperties(BTreeMap<String, String>);

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, shown(k, v))))
            .finish()
    }
}

/// A value as it may be shown: a secret's only as a reference.
fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret(key) && Reference::parse(value).is_none() {
        "[redacted]"
    } else {
        value
    }
}

impl FromIterator<(String, String)> for KafkaProperties {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        KafkaProperties(iter.into_iter().collect())
    }
}

impl KafkaProperties {
    /// Reads a properties file: `key=value` (or `key: value`) a line, `#` and `!` comments.
    /// Every property is checked as [`check_property`] does; a literal secret is allowed here
    /// (a worker's own file, such as a mounted Kubernetes Secret).
    pub fn from_file(path: &Path) -> Result<Self, KafkaConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| KafkaConfigError::Unreadable {
                path: path.to_path_buf(),
                source,
            })?;
        let mut out = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let fail = |problem| KafkaConfigError::File {
                path: path.to_path_buf(),
                line: n + 1,
                problem,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some(at) = line.find(['=', ':']) else {
                return Err(fail(PropertyError::NotAProperty));
            };
            let (key, value) = (line[..at].trim(), line[at + 1..].trim());
            check_property(key, value, true).map_err(&fail)?;
            if out.insert(key.to_string(), value.to_string()).is_some() {
                return Err(fail(PropertyError::Twice(key.to_string())));
            }
        }
        Ok(KafkaProperties(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// These properties with `over`'s on top.
    pub fn merged(&self, over: &KafkaProperties) -> KafkaProperties {
        let mut out = self.0.clone();
        out.extend(over.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        KafkaProperties(out)
    }
}

/// `${env:NAME}` or `${file:PATH}`.
enum Reference<'a> {
    Env(&'a str),
    File(&'a str),
}

impl<'a> Reference<'a> {
    /// The reference `value` is, if it is one; `Err` for a `${…}` Stratus does not know.
    fn parse(value: &'a str) -> Option<Result<Self, PropertyError>> {
        let inner = value.strip_prefix("${")?.strip_suffix('}')?;
        Some(match inner.split_once(':') {
            Some(("env", name)) if !name.is_empty() => Ok(Reference::Env(name)),
            Some(("file", path)) if !path.is_empty() => Ok(Reference::File(path)),
            _ => Err(PropertyError::UnknownReference(value.to_string())),
        })
    }

    fn resolve(&self) -> Result<String, PropertyError> {
        match self {
            Reference::Env(name) => {
                std::env::var(name).map_err(|_| PropertyError::EnvUnset(name.to_string()))
            }
            Reference::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|source| PropertyError::FileUnreadable {
                    path: path.to_string(),
                    source,
                }),
        }
    }
}

/// Checks one property as written: not one Stratus owns, known to librdkafka, a valid value
/// (when it is not a reference), a well-formed reference, and — unless `literal_secret` — no
/// secret written out. The message never holds a secret's value.
pub fn check_property(key: &str, value: &str, literal_secret: bool) -> Result<(), PropertyError> {
    if let Some((_, why)) = OWNED.iter().find(|(k, _)| *k == key) {
        return Err(PropertyError::Owned {
            key: key.to_string(),
            why,
        });
    }
    let reference = match Reference::parse(value) {
        Some(Err(e)) => return Err(e),
        Some(Ok(_)) => true,
        None => false,
    };
    if is_secret(key) && !reference && !literal_secret {
        return Err(PropertyError::LiteralSecret(key.to_string()));
    }
    // A reference's value is unknown here: only the key is checked, with a value every
    // string property takes.
    let probe = if reference { "" } else { value };
    match ClientConfig::new().set(key, probe).create_native_config() {
        Ok(_) => Ok(()),
        Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)) => {
            Err(PropertyError::Unknown(key.to_string()))
        }
        Err(_) if reference => Ok(()),
        Err(KafkaError::ClientConfig(_, desc, ..)) if !is_secret(key) => {
            Err(PropertyError::Invalid(desc))
        }
        Err(_) => Err(PropertyError::InvalidSecret(key.to_string())),
    }
}

/// How Stratus reaches one Kafka cluster: the brokers and resolved properties.
#[derive(Clone)]
pub struct KafkaConnection {
    brokers: String,
    properties: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The error callback of [`KafkaConnection::check`]: why the brokers were not reached.
#[derive(Default)]
struct Watch(Mutex<Option<(RDKafkaErrorCode, String)>>);

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the first specific reason: "all brokers are down" only says that there is one.
        let general = |c: &RDKafkaErrorCode| *c == RDKafkaErrorCode::AllBrokersDown;
        if seen
            .as_ref()
            .is_none_or(|(c, _)| general(c) && !general(&code))
        {
            *seen = Some((code, reason.to_string()));
        }
    }
}

impl ProducerContext for Watch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

impl KafkaConnection {
    /// Brokers reached in plaintext with librdkafka's defaults.
    pub fn plaintext(brokers: &str) -> Self {
        KafkaConnection {
            brokers: brokers.to_string(),
            properties: Vec::new(),
        }
    }

    /// Brokers reached with `properties`, their references resolved and every one checked.
    pub fn new(brokers: &str, properties: &KafkaProperties) -> Result<Self, KafkaConfigError> {
        let mut resolved = Vec::new();
        for (key, value) in properties.iter() {
            let fail = |problem| KafkaConfigError::Property {
                key: key.to_string(),
                problem,
            };
            let (value, referenced) = match Reference::parse(value) {
                Some(r) => (r.and_then(|r| r.resolve()).map_err(fail)?, true),
                None => (value.to_string(), false),
            };
            // librdkafka's words name the value: never one that came from a reference.
            check_property(key, &value, true).map_err(|e| match e {
                PropertyError::Invalid(_) if referenced => {
                    fail(PropertyError::InvalidSecret(key.to_string()))
                }
                e => fail(e),
            })?;
            resolved.push((key.to_string(), value));
        }
        Ok(KafkaConnection {
            brokers: brokers.to_string(),
            properties: resolved,
        })
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The brokers and how they are reached, for logs: no secret.
    pub fn describe(&self) -> String {
        let get = |k: &str| {
            self.properties
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let protocol = get("security.protocol").unwrap_or("plaintext");
        match (
            get("sasl.mechanism").or(get("sasl.mechanisms")),
            get("sasl.username"),
        ) {
            (Some(m), Some(user)) => format!("{} ({protocol}, {m} as {user})", self.brokers),
            (Some(m), None) => format!("{} ({protocol}, {m})", self.brokers),
            _ => format!("{} ({protocol})", self.brokers),
        }
    }

    /// The brokers and the user's properties, over `c`'s defaults.
    fn apply(&self, c: &mut ClientConfig) {
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
    }

    /// Settings for an admin client (creating topics).
    pub fn admin(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        self.apply(&mut c);
        c
    }

    /// Settings for a consumer in `group`.
    ///
    /// Prefetch: librdkafka fetches again while fewer than `queued.min.messages` (20,000, of
    /// 100,000 by default) or 16 MiB are queued, and when the queue is past either it waits
    /// `fetch.queue.backoff.ms` before asking again: 10 ms here. At its default of 1 s a
    /// consumer that drains its queue in a few milliseconds sat idle most of that second; in
    /// `stratus bench` the read phase took 4–5 s for 1,000,000 events instead of 2.3 s, and
    /// rdkafka alone ranged from 240,000 to 480,000 events/s instead of 840,000–900,000.
    /// A user's properties override these tuning defaults.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("fetch.wait.max.ms", "50")
            .set("queued.min.messages", "20000")
            .set("fetch.queue.backoff.ms", "10")
            .set("queued.max.messages.kbytes", "16384")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        self.apply(&mut c);
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        c
    }

    /// Settings for an idempotent producer: no duplicates or reordering from retries.
    ///
    /// A cycle hands the producer all its rows at once (a 200,000-row cycle is 200,000
    /// records), so the local queue holds a million messages: at librdkafka's default of
    /// 100,000, the rest of a cycle's sends found it full and rdkafka's `FutureProducer`
    /// retries those after sleeping 100 ms each time — that, not the broker, was most of the
    /// Kafka sinks' time in `stratus bench`. Memory is bounded by `queue.buffering.max.kbytes`
    /// instead: 64 MiB (librdkafka's default is 1 GiB); a sink that finds the queue full
    /// awaits its oldest record's delivery. A user's properties override these tuning
    /// defaults.
    pub fn producer(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "65536");
        self.apply(&mut c);
        c.set("enable.idempotence", "true").set("acks", "all");
        c
    }

    /// Asks the brokers for their metadata within `timeout`; on failure, says why (refused
    /// credentials, a certificate not trusted, nothing listening) as librdkafka reported it.
    /// Refused credentials and failed TLS handshakes fail at once ([`KafkaConfigError::Refused`]):
    /// retrying cannot help.
    pub async fn check(&self, timeout: Duration) -> Result<(), KafkaConfigError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.check_blocking(timeout))
            .await
            .map_err(|e| KafkaConfigError::Unreachable {
                brokers: self.describe(),
                reason: e.to_string(),
            })?
    }

    fn check_blocking(&self, timeout: Duration) -> Result<(), KafkaConfigError> {
        let unreachable = |reason: String| KafkaConfigError::Unreachable {
            brokers: self.describe(),
            reason,
        };
        let mut config = ClientConfig::new();
        self.apply(&mut config);
        // Its failures are reported here, once, not logged by librdkafka as well.
        config.set_log_level(RDKafkaLogLevel::Critical);
        let client: BaseProducer<Watch> = config
            .create_with_context(Watch::default())
            .map_err(|e| unreachable(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        loop {
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            let e = match client.client().fetch_metadata(None, step) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            // Serves the error callback.
            client.poll(Duration::ZERO);
            let seen = client
                .context()
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let fatal = matches!(
                seen,
                Some((RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL, _))
            );
            let reason = || seen.clone().map_or_else(|| e.to_string(), |(_, r)| r);
            if fatal {
                return Err(KafkaConfigError::Refused {
                    brokers: self.describe(),
                    reason: reason(),
                });
            }
            if Instant::now() >= deadline {
                return Err(unreachable(reason()));
            }
        }
    }
}

/// [`KafkaConnection::consumer`] for brokers reached in plaintext.
pub fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    KafkaConnection::plaintext(brokers).consumer(group)
}

/// [`KafkaConnection::producer`] for brokers reached in plaintext.
pub fn producer_config(brokers: &str) -> ClientConfig {
    KafkaConnection::plaintext(brokers).producer()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stratus-kafka-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_properties_file_is_read_and_its_errors_name_the_line() {
        let path = scratch("file").join("client.properties");
        std::fs::write(
            &path,
            "# worker settings\nsecurity.protocol=SASL_SSL\nsasl.mechanism: SCRAM-SHA-512\n\
             sasl.password=hunter2\n! done\n",
        )
        .unwrap();
        let p = KafkaProperties::from_file(&path).unwrap();
        let got: Vec<(&str, &str)> = p.iter().collect();
        assert_eq!(
            got,
            [
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.password", "hunter2"),
                ("security.protocol", "SASL_SSL")
            ]
        );
        assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");

        std::fs::write(&path, "security.protocol=SASL_SSL\nsasl.pasword=x\n").unwrap();
        let e = KafkaProperties::from_file(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:2: librdkafka has no property `sasl.pasword` (see librdkafka's CONFIGURATION.md)",
                path.display()
            )
        );
        std::fs::write(&path, "group.id=mine\n").unwrap();
        let e = KafkaProperties::from_file(&path).unwrap_err().to_string();
        assert!(
            e.ends_with(":1: `group.id` is set by Stratus: set the source's `group`"),
            "{e}"
        );
    }

    #[test]
    fn a_secret_is_never_written_in_a_pipeline_and_never_echoed() {
        let e = check_property("sasl.password", "hunter2", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a secret") && !e.contains("hunter2"), "{e}");
        check_property("sasl.password", "${env:KAFKA_PASSWORD}", false).unwrap();
        check_property("ssl.ca.location", "${file:/etc/ca-path}", false).unwrap();
        let e = check_property("sasl.password", "${vault:x}", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("use `${env:NAME}` or `${file:PATH}`"), "{e}");
        let e = check_property("security.protocol", "SASL_TLS", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SASL_TLS"),
            "a wrong value that is no secret is named: {e}"
        );
    }

    #[test]
    fn references_are_resolved_when_the_connection_is_made() {
        let secret = scratch("refs").join("password");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let props: KafkaProperties = [
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("sasl.mechanism".to_string(), "SCRAM-SHA-512".to_string()),
            ("sasl.username".to_string(), "stratus".to_string()),
            (
                "sasl.password".to_string(),
                format!("${{file:{}}}", secret.display()),
            ),
        ]
        .into_iter()
        .collect();
        let conn = KafkaConnection::new("127.0.0.1:1", &props).unwrap();
        let consumer = conn.consumer("g");
        assert_eq!(consumer.get("sasl.password"), Some("s3cr3t-value"));
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(conn.producer().get("enable.idempotence"), Some("true"));
        let shown = format!("{conn:?}");
        assert_eq!(shown, "127.0.0.1:1 (SASL_SSL, SCRAM-SHA-512 as stratus)");

        let missing: KafkaProperties = [(
            "sasl.password".to_string(),
            "${env:STRATUS_TEST_SURELY_UNSET}".to_string(),
        )]
        .into_iter()
        .collect();
        // A value from a reference that librdkafka refuses is not shown, whatever the key.
        let wrong = scratch("refs").join("protocol");
        std::fs::write(&wrong, "s3cr3t-but-not-a-protocol\n").unwrap();
        let referenced: KafkaProperties = [(
            "security.protocol".to_string(),
            format!("${{file:{}}}", wrong.display()),
        )]
        .into_iter()
        .collect();
        let e = KafkaConnection::new("b", &referenced)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Kafka property `security.protocol`: the value of `security.protocol` is not valid"
        );
        let e = KafkaConnection::new("b", &missing).unwrap_err().to_string();
        assert_eq!(
            e,
            "Kafka property `sasl.password`: the environment variable \
             STRATUS_TEST_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn the_pipelines_properties_win_over_the_workers() {
        let worker: KafkaProperties = [
            ("security.protocol".to_string(), "SSL".to_string()),
            ("socket.timeout.ms".to_string(), "30000".to_string()),
        ]
        .into_iter()
        .collect();
        let pipeline: KafkaProperties = [("security.protocol".to_string(), "SASL_SSL".to_string())]
            .into_iter()
            .collect();
        let merged = worker.merged(&pipeline);
        let got: Vec<(&str, &str)> = merged.iter().collect();
        assert_eq!(
            got,
            [
                ("security.protocol", "SASL_SSL"),
                ("socket.timeout.ms", "30000")
            ]
        );
    }
}
