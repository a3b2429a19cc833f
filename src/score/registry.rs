//! The model registry: versioned ONNX models with their manifests under an object-store prefix
//! (a local directory or `s3://bucket/prefix`).
//!
//! Layout: `<root>/<name>/<version>/model.onnx` and `<root>/<name>/<version>/manifest.json`,
//! versions numbered 1, 2, … A version exists once its manifest does: [`Registry::register`]
//! writes the model first and the manifest last, with a create-only put, so a reader never
//! sees half a version and two registrations never take the same number.
//!
//! In: a model reference as a pipeline writes it — `name` (the newest version, followed as new
//! ones are registered) or `name@3` (pinned). Out: the manifest and the model's bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model registry {location}: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
    #[error(
        "model registry {location}: no model named {name:?}; register one with `stratus models register`"
    )]
    NoModel { location: String, name: String },
    #[error("model registry {location}: {name} has no version {version} (it has {have:?})")]
    NoVersion {
        location: String,
        name: String,
        version: u32,
        have: Vec<u32>,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

/// Why a model reference (`name` or `name@version`) or a model name is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelRefError {
    /// What follows the `@` of `reference` is not a version number from 1.
    #[error("{reference:?}: the version after @ must be a number from 1, as in `{name}@2`")]
    Version { reference: String, name: String },
    /// Not one path segment of letters, digits, `_`, `-` and `.`.
    #[error("{name:?} is not a model name: use letters, digits, `_`, `-` and `.`")]
    Name { name: String },
}

/// `name` or `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub name: String,
    /// None: the newest version, followed as new ones are registered.
    pub version: Option<u32>,
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl std::str::FromStr for ModelRef {
    type Err = ModelRefError;

    fn from_str(s: &str) -> Result<Self, ModelRefError> {
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => {
                let v = v.parse::<u32>().ok().filter(|&v| v > 0).ok_or_else(|| {
                    ModelRefError::Version {
                        reference: s.to_string(),
                        name: n.to_string(),
                    }
                })?;
                (n, Some(v))
            }
            None => (s, None),
        };
        check_name(name)?;
        Ok(ModelRef {
            name: name.to_string(),
            version,
        })
    }
}

/// A model name is one path segment: letters, digits, `_`, `-` and `.`.
fn check_name(name: &str) -> Result<(), ModelRefError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ModelRefError::Name {
            name: name.to_string(),
        })
    }
}

/// One input feature, in the order of the model's input columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    /// The ONNX element type; Stratus feeds `float32`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// One output of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// Where the model's training rows came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Training {
    /// The Delta table read.
    pub table: String,
    /// Its Delta version when read.
    pub delta_version: i64,
    /// First and last event time of the rows used (RFC 3339).
    pub time_range: [String; 2],
    pub rows: u64,
}

/// What `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Set by the registry when the model is registered.
    #[serde(default)]
    pub version: u32,
    /// RFC 3339.
    pub created_at: String,
    /// The model's input: one `[rows, inputs.len()]` float tensor, columns in this order.
    pub inputs: Vec<Feature>,
    pub outputs: Vec<Output>,
    /// The output a pipeline reads as the model's score.
    pub score_output: String,
    pub training: Training,
    /// Evaluation figures (free-form numbers, e.g. `parity_max_abs_diff`).
    #[serde(default)]
    pub metrics: HashMap<String, f64>,
    /// Anything else the trainer records (algorithm, parameters, library versions).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Each input's binned distribution over the training rows, in input order, against which
    /// a score stage watches the input drift (`score::drift`). Older manifests have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_distribution: Option<Vec<super::drift::Binned>>,
}

impl Manifest {
    /// Checks what Stratus relies on: features named and float32, the score output listed.
    pub fn check(&self, what: &str) -> Result<(), RegistryError> {
        let invalid = |message: String| RegistryError::Invalid {
            what: what.to_string(),
            message,
        };
        check_name(&self.name).map_err(|e| invalid(e.to_string()))?;
        if self.inputs.is_empty() {
            return Err(invalid(
                "`inputs` is empty; list the feature columns in order".into(),
            ));
        }
        if let Some(f) = self.inputs.iter().find(|f| f.kind != "float32") {
            return Err(invalid(format!(
                "input {:?} has type {:?}; Stratus feeds float32",
                f.name, f.kind
            )));
        }
        if let Some(bins) = &self.input_distribution {
            let names: Vec<&str> = bins.iter().map(|b| b.name.as_str()).collect();
            if !names.iter().copied().eq(self.feature_names()) {
                return Err(invalid(format!(
                    "`input_distribution` is of {names:?}; it must follow `inputs` in order"
                )));
            }
            if let Some(problem) = bins.iter().find_map(super::drift::Binned::problem) {
                return Err(invalid(format!("`input_distribution`: {problem}")));
            }
        }
        if !self.outputs.iter().any(|o| o.name == self.score_output) {
            return Err(invalid(format!(
                "score_output {:?} is not among the outputs",
                self.score_output
            )));
        }
        Ok(())
    }

    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().map(|f| f.name.as_str())
    }
}

/// A registered version: its manifest and the ONNX bytes.
#[derive(Clone)]
pub struct ModelVersion {
    pub manifest: Manifest,
    pub onnx: Arc<Vec<u8>>,
}

/// A registry at one location.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: String,
}

const MANIFEST: &str = "manifest.json";
const MODEL: &str = "model.onnx";

impl Registry {
    pub fn open(
        location: &str,
        storage_options: &HashMap<String, String>,
    ) -> Result<Self, RegistryError> {
        let (store, root) =
            crate::sink::open_store(location, storage_options).map_err(|source| {
                RegistryError::Store {
                    location: location.to_string(),
                    source,
                }
            })?;
        Ok(Registry {
            store,
            root,
            location: location.to_string(),
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn err(&self, source: object_store::Error) -> RegistryError {
        RegistryError::Store {
            location: self.location.clone(),
            source,
        }
    }

    fn path(&self, parts: &[&str]) -> Path {
        self.root
            .parts()
            .chain(parts.iter().map(|p| object_store::path::PathPart::from(*p)))
            .collect()
    }

    /// The registered versions of `name`, ascending (only those whose manifest exists).
    pub async fn versions(&self, name: &str) -> Result<Vec<u32>, RegistryError> {
        check_name(name).map_err(|e| RegistryError::Invalid {
            what: "model name".into(),
            message: e.to_string(),
        })?;
        let prefix = self.path(&[name]);
        let listed: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        let mut versions: Vec<u32> = listed
            .iter()
            .filter_map(|meta| {
                let mut parts = meta.location.prefix_match(&prefix)?;
                let version = parts.next()?.as_ref().parse().ok()?;
                (parts.next()?.as_ref() == MANIFEST && parts.next().is_none()).then_some(version)
            })
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The names of all registered models.
    pub async fn names(&self) -> Result<Vec<String>, RegistryError> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(|e| self.err(e))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The version a reference means now: its pinned one, or the newest.
    pub async fn resolve(&self, model: &ModelRef) -> Result<u32, RegistryError> {
        let have = self.versions(&model.name).await?;
        match (model.version, have.last()) {
            (_, None) => Err(RegistryError::NoModel {
                location: self.location.clone(),
                name: model.name.clone(),
            }),
            (None, Some(&newest)) => Ok(newest),
            (Some(v), Some(_)) if have.contains(&v) => Ok(v),
            (Some(version), Some(_)) => Err(RegistryError::NoVersion {
                location: self.location.clone(),
                name: model.name.clone(),
                version,
                have,
            }),
        }
    }

    pub async fn manifest(&self, name: &str, version: u32) -> Result<Manifest, RegistryError> {
        let v = version.to_string();
        let bytes = self
            .store
            .get(&self.path(&[name, &v, MANIFEST]))
            .await
            .map_err(|e| self.err(e))?
            .bytes()
            .await
            .map_err(|e| self.err(e))?;
        let what = format!("{}/{name}/{v}/{MANIFEST}", self.location);
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
                what: what.clone(),
                message: e.to_string(),
            })?;
        manifest.check(&what)?;
        Ok(manifest)
    }

    pub async fn load(&self, name: &str, version: u32) -> Result<ModelVersion, RegistryError> {
        let manifest = self.manifest(name, version).await?;
        let onnx = self
            .store
            .get(&self.path(&[name, &version.to_string(), MODEL]))
            .await
            .map_err(|e| self.err(e))?
            .bytes()
            .await
            .map_err(|e| self.err(e))?;
        Ok(ModelVersion {
            manifest,
            onnx: Arc::new(onnx.to_vec()),
        })
    }

    /// Registers `onnx` with `manifest` as the next version of `manifest.name`; returns it.
    pub async fn register(
        &self,
        mut manifest: Manifest,
        onnx: &[u8],
    ) -> Result<u32, RegistryError> {
        manifest.check("the manifest to register")?;
        loop {
            let version = self
                .versions(&manifest.name)
                .await?
                .last()
                .map_or(1, |v| v + 1);
            manifest.version = version;
            let v = version.to_string();
            let name = manifest.name.clone();
            self.store
                .put(
                    &self.path(&[&name, &v, MODEL]),
                    PutPayload::from(onnx.to_vec()),
                )
                .await
                .map_err(|e| self.err(e))?;
            let json =
                serde_json::to_vec_pretty(&manifest).map_err(|e| RegistryError::Invalid {
                    what: "manifest".into(),
                    message: e.to_string(),
                })?;
            let create = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&self.path(&[&name, &v, MANIFEST]), json.into(), create)
                .await
            {
                Ok(_) => return Ok(version),
                // Someone registered this number first: take the next.
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(self.err(e)),
            }
        }
    }
}

/// A newer registered version swapped in for the one in use (labels as `name@version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    pub from: String,
    pub to: String,
}

impl std::fmt::Display for Swap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} replaces {}", self.to, self.from)
    }
}

/// Why a model refresh kept the version in use (`current`, as `name@version`).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The registry could not be asked for a newer version.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// As [`Registry`](Self::Registry), naming the version that stays (a forecast model's).
    #[error("{current} stays: {source}")]
    Lookup {
        current: String,
        source: RegistryError,
    },
    /// The newer version `name@version` cannot be used; it is not offered again.
    #[error("{current} stays: {name}@{version} cannot be used: {source}")]
    Unusable {
        current: String,
        name: String,
        version: u32,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The newer version is not a forecast model: its inputs are not `forecast::model::FEATURES`.
    #[error(
        "{current} stays: {name}@{version} cannot be used: not a forecast model (inputs {inputs:?})"
    )]
    NotForecast {
        current: String,
        name: String,
        version: u32,
        inputs: Vec<String>,
    },
    /// The newer version takes another number of inputs than the SQL calling it gives.
    #[error("{current} stays: {newer} takes {takes} inputs, the SQL gives {gives}")]
    Inputs {
        current: String,
        newer: String,
        takes: usize,
        gives: usize,
    },
    #[error("the models' lock is poisoned")]
    Poisoned,
}

/// What one model refresh did: a newer version swapped in, or why the current one stays.
pub type Refresh = Result<Swap, RefreshError>;

/// Follows a model reference in a registry for a running stage: every `poll`, an unpinned
/// reference is resolved again and a newer version offered; a version the stage found
/// unusable is remembered and not offered again (a newer one still is). A pinned reference is
/// never swapped.
#[derive(Debug, Clone)]
pub struct Follower {
    reference: ModelRef,
    version: u32,
    poll: Duration,
    last_poll: Instant,
    rejected: Option<u32>,
}

impl Follower {
    /// Follows `reference`, whose version `version` is in use.
    pub fn new(reference: ModelRef, version: u32, poll: Duration) -> Self {
        Follower {
            reference,
            version,
            poll,
            last_poll: Instant::now(),
            rejected: None,
        }
    }

    pub fn reference(&self) -> &ModelRef {
        &self.reference
    }

    /// The version in use.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// `name@version` of the version in use.
    pub fn label(&self) -> String {
        format!("{}@{}", self.reference.name, self.version)
    }

    /// A newer version to swap in, when it is time to look and there is one: its number and
    /// what is registered. Call [`accept`](Self::accept) or [`reject`](Self::reject) after.
    pub async fn newer(
        &mut self,
        registry: &Registry,
    ) -> Option<Result<(u32, ModelVersion), RegistryError>> {
        if self.reference.version.is_some() || self.last_poll.elapsed() < self.poll {
            return None;
        }
        self.last_poll = Instant::now();
        let newest = match registry.resolve(&self.reference).await {
            Ok(v) if v > self.version && Some(v) != self.rejected => v,
            Ok(_) => return None,
            Err(e) => return Some(Err(e)),
        };
        Some(
            registry
                .load(&self.reference.name, newest)
                .await
                .map(|loaded| (newest, loaded)),
        )
    }

    /// `version` is in use now.
    pub fn accept(&mut self, version: u32) {
        self.version = version;
    }

    /// `version` cannot be used: it is not offered again.
    pub fn reject(&mut self, version: u32) {
        self.rejected = Some(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            version: 0,
            created_at: "2026-11-28T00:00:00Z".into(),
            inputs: vec![Feature {
                name: "mean".into(),
                kind: "float32".into(),
            }],
            outputs: vec![Output {
                name: "anomaly_score".into(),
                description: String::new(),
            }],
            score_output: "anomaly_score".into(),
            training: Training {
                table: "t".into(),
                delta_version: 3,
                time_range: ["a".into(), "b".into()],
                rows: 10,
            },
            metrics: HashMap::new(),
            details: serde_json::Map::new(),
            input_distribution: None,
        }
    }

    fn scratch(name: &str) -> String {
        let dir =
            std::env::temp_dir().join(format!("stratus-registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.display().to_string()
    }

    #[test]
    fn references_parse_with_and_without_a_version() {
        assert_eq!(
            "anomaly@3".parse::<ModelRef>().unwrap(),
            ModelRef {
                name: "anomaly".into(),
                version: Some(3)
            }
        );
        assert_eq!("anomaly".parse::<ModelRef>().unwrap().version, None);
        assert_eq!(
            "anomaly@0".parse::<ModelRef>().unwrap_err().to_string(),
            "\"anomaly@0\": the version after @ must be a number from 1, as in `anomaly@2`"
        );
        assert_eq!(
            "anomaly@latest".parse::<ModelRef>(),
            Err(ModelRefError::Version {
                reference: "anomaly@latest".into(),
                name: "anomaly".into()
            })
        );
        assert_eq!(
            "../x".parse::<ModelRef>().unwrap_err().to_string(),
            "\"../x\" is not a model name: use letters, digits, `_`, `-` and `.`"
        );
    }

    #[test]
    fn refreshes_read_as_they_did() {
        let (label, name, version) = ("m@1", "m", 2);
        assert_eq!(
            Swap {
                from: label.into(),
                to: "m@2".into()
            }
            .to_string(),
            "m@2 replaces m@1"
        );
        let registry = || RegistryError::NoModel {
            location: "/r".into(),
            name: name.into(),
        };
        let e = registry();
        assert_eq!(RefreshError::from(registry()).to_string(), e.to_string());
        assert_eq!(
            RefreshError::Lookup {
                current: label.into(),
                source: registry()
            }
            .to_string(),
            format!("{label} stays: {e}")
        );
        let why = "model m@2: the ONNX graph has no output \"x\"";
        assert_eq!(
            RefreshError::Unusable {
                current: label.into(),
                name: name.into(),
                version,
                source: why.into()
            }
            .to_string(),
            format!("{label} stays: {name}@{version} cannot be used: {why}")
        );
        let features = vec!["a", "b"];
        assert_eq!(
            RefreshError::NotForecast {
                current: label.into(),
                name: name.into(),
                version,
                inputs: features.iter().map(|f| f.to_string()).collect()
            }
            .to_string(),
            format!(
                "{label} stays: {name}@{version} cannot be used: not a forecast model (inputs \
                 {features:?})"
            )
        );
        assert_eq!(
            RefreshError::Inputs {
                current: label.into(),
                newer: "m@2".into(),
                takes: 3,
                gives: 2
            }
            .to_string(),
            format!("{label} stays: m@2 takes 3 inputs, the SQL gives 2")
        );
    }

    #[tokio::test]
    async fn versions_count_up_and_resolve_to_the_newest_or_the_pinned_one() {
        let r = Registry::open(&scratch("versions"), &HashMap::new()).unwrap();
        let newest = "m".parse::<ModelRef>().unwrap();
        assert!(matches!(
            r.resolve(&newest).await,
            Err(RegistryError::NoModel { .. })
        ));
        assert_eq!(r.register(manifest("m"), b"one").await.unwrap(), 1);
        assert_eq!(r.register(manifest("m"), b"two").await.unwrap(), 2);
        assert_eq!(r.register(manifest("other"), b"x").await.unwrap(), 1);
        assert_eq!(r.versions("m").await.unwrap(), vec![1, 2]);
        assert_eq!(r.names().await.unwrap(), vec!["m", "other"]);
        assert_eq!(r.resolve(&newest).await.unwrap(), 2);
        assert_eq!(r.resolve(&"m@1".parse().unwrap()).await.unwrap(), 1);
        let missing = r
            .resolve(&"m@7".parse().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("m has no version 7 (it has [1, 2])"),
            "{missing}"
        );
        let v1 = r.load("m", 1).await.unwrap();
        assert_eq!((v1.manifest.version, v1.onnx.as_slice()), (1, &b"one"[..]));
    }

    #[tokio::test]
    async fn a_version_without_its_manifest_does_not_exist() {
        let dir = scratch("partial");
        let r = Registry::open(&dir, &HashMap::new()).unwrap();
        r.register(manifest("m"), b"one").await.unwrap();
        // A registration that died after the model and before the manifest.
        std::fs::create_dir_all(format!("{dir}/m/2")).unwrap();
        std::fs::write(format!("{dir}/m/2/model.onnx"), b"half").unwrap();
        assert_eq!(r.versions("m").await.unwrap(), vec![1]);
        assert_eq!(r.resolve(&"m".parse().unwrap()).await.unwrap(), 1);
        // The next registration takes number 2 and completes it.
        assert_eq!(r.register(manifest("m"), b"two").await.unwrap(), 2);
        assert_eq!(r.load("m", 2).await.unwrap().onnx.as_slice(), b"two");
    }

    #[test]
    fn a_manifest_must_name_float_features_and_its_score_output() {
        let mut m = manifest("m");
        m.inputs[0].kind = "int64".into();
        assert!(
            m.check("x")
                .unwrap_err()
                .to_string()
                .contains("Stratus feeds float32")
        );
        let mut m = manifest("m");
        m.score_output = "nope".into();
        assert!(
            m.check("x")
                .unwrap_err()
                .to_string()
                .contains("not among the outputs")
        );
    }

    #[test]
    fn a_manifests_input_distribution_must_follow_its_inputs() {
        let bins = |name: &str| super::super::drift::Binned {
            name: name.into(),
            edges: vec![0.0],
            shares: vec![0.4, 0.6],
        };
        let mut m = manifest("m");
        m.input_distribution = Some(vec![bins("mean")]);
        m.check("x").unwrap();
        m.input_distribution = Some(vec![bins("max")]);
        let e = m.check("x").unwrap_err().to_string();
        assert!(e.contains("must follow `inputs`"), "{e}");
        let mut b = bins("mean");
        b.shares = vec![0.4, 0.4];
        m.input_distribution = Some(vec![b]);
        let e = m.check("x").unwrap_err().to_string();
        assert!(e.contains("sum to 1"), "{e}");
    }
}
