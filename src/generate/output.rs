//! Where generated events go: JSON-lines files per topic, or Kafka topics at a chosen rate.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{Emit, GenerateError, Result};
use crate::kafka::KafkaConnection;

/// `<dir>/<topic>.jsonl`, one event a line.
pub struct Files {
    dir: PathBuf,
    files: HashMap<&'static str, BufWriter<File>>,
    pub counts: HashMap<&'static str, u64>,
}

impl Files {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| GenerateError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Files {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            counts: HashMap::new(),
        })
    }

    pub fn finish(mut self) -> Result<HashMap<&'static str, u64>> {
        for (topic, f) in self.files.iter_mut() {
            f.flush().map_err(|source| GenerateError::Io {
                path: self
                    .dir
                    .join(format!("{topic}.jsonl"))
                    .display()
                    .to_string(),
                source,
            })?;
        }
        Ok(self.counts)
    }
}

impl Emit for Files {
    fn emit(&mut self, topic: &'static str, _key: &str, payload: &str, _ts: i64) -> Result<()> {
        let path = || {
            self.dir
                .join(format!("{topic}.jsonl"))
                .display()
                .to_string()
        };
        let io = |source| GenerateError::Io {
            path: path(),
            source,
        };
        let file = match self.files.get_mut(topic) {
            Some(f) => f,
            None => {
                let f = File::create(path()).map_err(io)?;
                self.files.entry(topic).or_insert(BufWriter::new(f))
            }
        };
        file.write_all(payload.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .map_err(io)?;
        *self.counts.entry(topic).or_default() += 1;
        Ok(())
    }
}

/// Kafka topics `<prefix><topic>`, keyed, at most `rate` events a second (0: no limit).
pub struct Kafka {
    producer: BaseProducer,
    prefix: String,
    rate: f64,
    started: Instant,
    sent: u64,
    pub counts: HashMap<&'static str, u64>,
}

impl Kafka {
    pub fn new(kafka: &KafkaConnection, prefix: &str, rate: f64) -> Result<Self> {
        Ok(Kafka {
            producer: kafka
                .producer()
                .create()
                .map_err(|source| GenerateError::Kafka {
                    topic: format!("{prefix}*"),
                    source,
                })?,
            prefix: prefix.to_string(),
            rate,
            started: Instant::now(),
            sent: 0,
            counts: HashMap::new(),
        })
    }

    pub fn finish(self) -> Result<HashMap<&'static str, u64>> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|source| GenerateError::Kafka {
                topic: format!("{}*", self.prefix),
                source,
            })?;
        Ok(self.counts)
    }
}

impl Emit for Kafka {
    fn emit(&mut self, topic: &'static str, key: &str, payload: &str, _ts: i64) -> Result<()> {
        if self.rate > 0.0 {
            // Pace by processing time: event n goes out no earlier than n / rate seconds in.
            let due = Duration::from_secs_f64(self.sent as f64 / self.rate);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let full = format!("{}{topic}", self.prefix);
        let mut record = BaseRecord::to(&full).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    self.producer.poll(Duration::from_millis(50));
                    record = r;
                }
                Err((source, _)) => {
                    return Err(GenerateError::Kafka {
                        topic: full.clone(),
                        source,
                    });
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        self.sent += 1;
        *self.counts.entry(topic).or_default() += 1;
        Ok(())
    }
}
