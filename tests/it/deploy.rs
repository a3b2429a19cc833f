//! The deployment files, checked offline (no image registry or cluster is reachable here):
//! the Kubernetes manifests against the Kubernetes API's own schemas (kubernetes-validate,
//! strict: an unknown field fails), and against what the worker serves and exports; the
//! Dockerfile parsed (dockerfile-parse) and held to the project's pins and paths.

use std::path::Path;
use std::process::Command;

use crate::setting;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The manifests `kubectl apply -k deploy/kubernetes` applies, and the Secret beside them.
const MANIFESTS: [&str; 6] = [
    "configmap.yaml",
    "secret.yaml",
    "worker.yaml",
    "service.yaml",
    "pdb.yaml",
    "hpa.yaml",
];

fn yaml(file: &str) -> serde_norway::Value {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes").join(file)).unwrap();
    serde_norway::from_str(&text).unwrap()
}

#[test]
fn kubernetes_manifests_validate_and_match_the_worker() {
    let python = setting("STRATUS_PYTHON");
    let validate = Path::new(&python).with_file_name("kubernetes-validate");
    let out = Command::new(&validate)
        .args(["--strict", "--kubernetes-version", "1.31"])
        .args(MANIFESTS.map(|m| root().join("deploy/kubernetes").join(m)))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        MANIFESTS.len(),
        "{text}"
    );

    let kustomization = yaml("kustomization.yaml");
    let listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let mut applied: Vec<&str> = MANIFESTS
        .iter()
        .copied()
        .filter(|m| *m != "secret.yaml")
        .collect();
    applied.sort_unstable();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, applied,
        "the kustomization applies every manifest but the Secret"
    );

    // The probes ask what the metrics server serves, where the worker is told to serve it.
    let worker = yaml("worker.yaml");
    let pod = &worker["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0].as_str(), Some("worker"));
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    let addr = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("STRATUS_METRICS_ADDR"))
        .and_then(|e| e["value"].as_str())
        .unwrap();
    assert_eq!(addr, format!("0.0.0.0:{port}"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["runAsUser"].as_u64(),
        Some(10001),
        "the image's user"
    );

    // The autoscaler scales on a metric the workers export.
    let hpa = yaml("hpa.yaml");
    let metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
        .as_str()
        .unwrap();
    let metrics = stratus::metrics::PipelineMetrics::new();
    metrics
        .consumer_lag
        .with_label_values(&["p", "s", "0"])
        .set(1);
    let exported = metrics.render();
    assert!(
        exported
            .lines()
            .any(|l| l.starts_with(&format!("{metric}{{"))),
        "{metric} is not exported:\n{exported}"
    );

    // The ConfigMap's properties file takes the password from the Secret, not in clear.
    let config = yaml("configmap.yaml");
    let properties = config["data"]["client.properties"].as_str().unwrap();
    assert!(
        properties.contains("sasl.password=${env:KAFKA_PASSWORD}"),
        "{properties}"
    );
    let secret = yaml("secret.yaml");
    for (key, value) in secret["stringData"].as_mapping().unwrap() {
        assert_eq!(
            value.as_str(),
            Some(""),
            "{key:?} holds a value in the repository"
        );
    }
}

#[test]
fn the_dockerfile_builds_in_stages_runs_unprivileged_with_the_pinned_onnx_runtime() {
    let script = r#"
import json, sys
from dockerfile_parse import DockerfileParser
d = DockerfileParser(sys.argv[1])
print(json.dumps([[i["instruction"], i["value"]] for i in d.structure]))
"#;
    let out = Command::new(setting("STRATUS_PYTHON"))
        .args(["-c", script])
        .arg(root().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    let froms: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].0 == "FROM").collect();
    assert!(
        froms.len() >= 3,
        "build, ONNX Runtime and runtime stages: {froms:?}"
    );
    let last = &steps[*froms.last().unwrap()..];
    let find = |what: &str| -> Vec<&str> {
        last.iter()
            .filter(|(i, _)| i == what)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        find("USER"),
        vec!["10001:10001"],
        "an unprivileged user, the manifests' runAsUser"
    );
    assert_eq!(find("ENTRYPOINT"), vec![r#"["/usr/local/bin/stratus"]"#]);
    assert!(
        !last
            .iter()
            .any(|(i, v)| i == "RUN" && (v.contains("cargo") || v.contains("pip"))),
        "the runtime stage has neither a compiler nor pip"
    );

    // The ONNX Runtime the image loads is the one the project pins (and `ort` api-31 loads).
    let requirements = std::fs::read_to_string(root().join("scripts/requirements.txt")).unwrap();
    let pin = requirements
        .lines()
        .find_map(|l| l.strip_prefix("onnxruntime=="))
        .unwrap()
        .trim();
    assert!(
        steps
            .iter()
            .any(|(i, v)| i == "RUN" && v.contains(&format!("onnxruntime=={pin}"))),
        "the wheel installed is not onnxruntime=={pin}"
    );
    let library = format!("/usr/local/lib/libonnxruntime.so.{pin}");
    assert!(
        find("ENV")
            .iter()
            .any(|v| v.contains(&format!("ORT_DYLIB_PATH={library}"))),
        "ORT_DYLIB_PATH is not {library}"
    );
    // The build stage copies every folder the source compiles in (include_str!) before it
    // builds.
    let build = &steps[froms[0]..froms[1]];
    let cargo = build
        .iter()
        .position(|(i, v)| i == "RUN" && v.contains("cargo build"))
        .expect("the build stage runs cargo build");
    let copied: Vec<&str> = build[..cargo]
        .iter()
        .filter(|(i, _)| i == "COPY")
        .flat_map(|(_, v)| v.split_whitespace().next())
        .collect();
    let mut included = std::collections::BTreeSet::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for rest in text.split("include_str!(\"").skip(1) {
                let target = rest.split('"').next().unwrap();
                let full = path.parent().unwrap().join(target);
                let relative = std::path::absolute(&full).unwrap();
                let relative = normalise(&relative);
                let top = relative
                    .strip_prefix(root())
                    .unwrap()
                    .components()
                    .next()
                    .unwrap();
                included.insert(top.as_os_str().to_string_lossy().into_owned());
            }
        }
    }
    assert!(!included.is_empty());
    for dir in &included {
        assert!(
            copied.contains(&dir.as_str()),
            "the build stage does not copy {dir}, which the source compiles in: {copied:?}"
        );
    }

    // Every path it copies from the repository exists.
    for (i, value) in &steps {
        if i != "COPY" || value.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = value.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                root().join(source).exists(),
                "COPY {source}: not in the repository"
            );
        }
    }
}

/// `path` with its `..` resolved, without the file system.
fn normalise(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
