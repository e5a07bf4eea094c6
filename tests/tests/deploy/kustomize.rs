//! Builds of `deploy/` with `kubectl kustomize` (the kustomize an operator
//! runs), and what the API server and the kubelet would make of them.
//! Shared by the deploy tests; each uses some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `kubectl kustomize <dir>`, one value per document.
pub fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl kustomize (is kubectl on PATH?)")?;
    if !output.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8(output.stdout)?;
    serde_saphyr::from_multiple(&text)
        .with_context(|| format!("kubectl kustomize printed invalid YAML:\n{text}"))
}

/// `kubectl kustomize deploy/<part>`.
pub fn deploy(part: &str) -> Result<Vec<Value>> {
    kustomize(&repo().join("deploy").join(part))
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind}/{name} in the build"))
}

pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether a `matchLabels` selector selects an object with `labels`: every
/// pair it names is among them (an empty selector selects everything, as
/// in kube; callers that mean "these pods" check it is not empty).
pub fn selects(match_labels: &Value, labels: &Value) -> bool {
    match_labels.as_object().is_some_and(|wanted| {
        !wanted.is_empty() && wanted.iter().all(|(key, value)| labels[key] == *value)
    })
}

/// A container's args with `$(VAR)` expanded as the kubelet does from the
/// container's env: a literal `value`, a ConfigMap key (looked up in
/// `docs`, the build the Deployment came from), or a downward API field,
/// which becomes `<fieldRef:PATH>` since only the pod knows its value. An
/// unknown variable stays as written, as the kubelet leaves it.
pub fn expanded_args(docs: &[Value], container: &Value) -> Result<Vec<String>> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for env in container["env"].as_array().into_iter().flatten() {
        let name = env["name"]
            .as_str()
            .context("an env entry without a name")?;
        let value = if let Some(value) = env["value"].as_str() {
            value.to_owned()
        } else if let Some(path) = env["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            format!("<fieldRef:{path}>")
        } else if env["valueFrom"]["configMapKeyRef"].is_object() {
            let reference = &env["valueFrom"]["configMapKeyRef"];
            let map = reference["name"].as_str().unwrap_or_default();
            let key = reference["key"].as_str().unwrap_or_default();
            find(docs, "ConfigMap", map)?["data"][key]
                .as_str()
                .with_context(|| format!("ConfigMap {map} has no key {key} (env {name})"))?
                .to_owned()
        } else {
            continue;
        };
        vars.push((name.to_owned(), value));
    }
    Ok(strings(&container["args"])
        .into_iter()
        .map(|arg| {
            vars.iter().fold(arg.to_owned(), |arg, (name, value)| {
                arg.replace(&format!("$({name})"), value)
            })
        })
        .collect())
}

/// The value of `--flag=value` among `args`.
pub fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter()
        .find_map(|arg| arg.strip_prefix(prefix.as_str()))
}

/// kustomize wants a relative path to a base outside the overlay's root.
pub fn relative(from: &Path, to: &Path) -> Result<String> {
    let depth = from.components().count().saturating_sub(1);
    let up = "../".repeat(depth);
    let to = to
        .strip_prefix("/")
        .context("the repository's path is absolute")?;
    Ok(format!("{up}{}", to.display()))
}
