//! Finds and loads ONNX Runtime (`libonnxruntime`), once per process.
//!
//! `ort` is built with `load-dynamic`: nothing is downloaded at build time, and the library is
//! opened at run time. Where it comes from, in order:
//! 1. `ORT_DYLIB_PATH`, when set (it must name an existing file);
//! 2. the project's Python environment — `$STRATUS_VENV`, else `$STRATUS_CACHE/venv`, else
//!    `~/.cache/stratus/venv` — whose pinned `onnxruntime` wheel carries
//!    `onnxruntime/capi/libonnxruntime.so.<version>`;
//! 3. otherwise an error that names the command which installs it.
//!
//! Out: an [`ort::environment::Environment`] shared by every session of the process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The command that installs ONNX Runtime into the project's Python environment.
pub const INSTALL_HINT: &str = "scripts/test-env python";

/// Why ONNX Runtime could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ORT_DYLIB_PATH is set to {0}, which does not exist; point it at libonnxruntime.so or unset it to use the project's Python environment"
    )]
    MissingOverride(PathBuf),
    #[error(
        "ONNX Runtime not found: no libonnxruntime in {searched}; run `{INSTALL_HINT}` to install it there, or set ORT_DYLIB_PATH to the library"
    )]
    NotFound { searched: String },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// Where to look, as read from the environment.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSearch {
    pub dylib_override: Option<PathBuf>,
    pub venvs: Vec<PathBuf>,
}

impl RuntimeSearch {
    /// The search the process environment asks for.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut venvs = Vec::new();
        if let Some(v) = var("STRATUS_VENV") {
            venvs.push(v);
        }
        if let Some(c) = var("STRATUS_CACHE") {
            venvs.push(c.join("venv"));
        }
        if let Some(h) = var("HOME") {
            venvs.push(h.join(".cache/stratus/venv"));
        }
        RuntimeSearch {
            dylib_override: var("ORT_DYLIB_PATH"),
            venvs,
        }
    }

    /// The library to load.
    pub fn locate(&self) -> Result<PathBuf, RuntimeError> {
        if let Some(p) = &self.dylib_override {
            return if p.is_file() {
                Ok(p.clone())
            } else {
                Err(RuntimeError::MissingOverride(p.clone()))
            };
        }
        for venv in &self.venvs {
            if let Some(lib) = library_in_venv(venv) {
                return Ok(lib);
            }
        }
        Err(RuntimeError::NotFound {
            searched: if self.venvs.is_empty() {
                "no Python environment (HOME is not set)".to_string()
            } else {
                self.venvs
                    .iter()
                    .map(|v| v.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
    }
}

/// `<venv>/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so*`, the real file.
fn library_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|e| std::fs::read_dir(e.path().join("site-packages/onnxruntime/capi")).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
                && p.is_file()
        })
        .collect();
    // Prefer the fully versioned name (libonnxruntime.so.1.31.1) over any symlink.
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

static ENVIRONMENT: OnceLock<Result<Environment, RuntimeError>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = RuntimeSearch::from_env().locate()?;
            let load = |message: String| RuntimeError::Load {
                path: path.clone(),
                message,
            };
            let builder = ort::init_from(&path).map_err(|e| load(e.to_string()))?;
            builder
                .with_name("stratus")
                .build()
                .map_err(|e| load(e.to_string()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_library_in_a_venv() {
        let dir = std::env::temp_dir().join(format!("stratus-ort-{}", std::process::id()));
        let capi = dir.join("venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        let search = RuntimeSearch {
            dylib_override: None,
            venvs: vec![dir.join("missing"), dir.join("venv")],
        };
        assert_eq!(
            search.locate().unwrap(),
            capi.join("libonnxruntime.so.1.31.1")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_install_command_and_the_bad_override() {
        let search = RuntimeSearch {
            dylib_override: None,
            venvs: vec![PathBuf::from("/nonexistent/venv")],
        };
        let e = search.locate().unwrap_err().to_string();
        assert!(e.contains("run `scripts/test-env python`"), "{e}");
        assert!(e.contains("/nonexistent/venv"), "{e}");
        let search = RuntimeSearch {
            dylib_override: Some(PathBuf::from("/nonexistent/lib.so")),
            venvs: vec![],
        };
        assert!(matches!(
            search.locate(),
            Err(RuntimeError::MissingOverride(p)) if p == Path::new("/nonexistent/lib.so")
        ));
    }
}
