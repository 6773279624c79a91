//! The deployment artifacts under `deploy/`: what can be checked without a cluster or a
//! container engine.
//!
//! - every YAML file parses (all documents), Kubernetes objects are well formed and the
//!   Deployment has the replicas, probes, limits and shutdown timing the gateway needs;
//! - the ConfigMap's gateway.toml is valid TOML, matches the Deployment (ports, Secret mount,
//!   checksum annotation) and passes `wetrials-gateway check`;
//! - `promtool check rules`, `promtool test rules` and `promtool check config` pass;
//! - the Grafana dashboard parses, every panel has queries, and they are valid PromQL;
//! - every `gateway_*` metric named by the alerts or the dashboard is one the gateway exports
//!   ([`EXPORTED_METRICS`], kept in step with the README's metrics table);
//! - the Docker HEALTHCHECK script tells a 200 from anything else, and the Dockerfile and the
//!   systemd unit keep their essentials.
//!
//! `promtool` comes from the Debian package `prometheus`; a missing promtool fails these tests.

mod common;

use common::{metric_names_in, self_signed_cert};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

/// Every metric the gateway exports (names and labels are fixed; see the README's metrics
/// table). Histograms are listed by their base name.
pub const EXPORTED_METRICS: &[&str] = &[
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "gateway_upstream_duration_seconds",
    "gateway_upstream_errors_total",
    "gateway_auth_decisions_total",
    "gateway_jwks_fetches_total",
    "gateway_jwks_keys",
    "gateway_jwks_last_success_timestamp_seconds",
    "gateway_token_cache_requests_total",
    "gateway_ratelimit_decisions_total",
    "gateway_ratelimit_backend_errors_total",
    "gateway_ratelimit_backend_duration_seconds",
    "gateway_ratelimit_fallbacks_total",
    "gateway_config_reloads_total",
    "gateway_config_last_reload_success_timestamp_seconds",
    "gateway_build_info",
    "gateway_ready",
];

// ---------------------------------------------------------------------------------------------
// helpers

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Files under `dir` (recursively) whose name ends in one of `suffixes`, sorted.
fn files_ending_in(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if suffixes.iter().any(|s| name.ends_with(s)) {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    out
}

/// Every non-empty document of a (multi-document) YAML file.
fn yaml_documents(path: &Path) -> Vec<Yaml> {
    let text = read(path);
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let doc = Yaml::deserialize(de)
            .unwrap_or_else(|e| panic!("{} document {i} is not valid YAML: {e}", path.display()));
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    docs
}

/// Follows `keys` (mapping keys or sequence indexes written as numbers) into a YAML value.
fn at<'a>(v: &'a Yaml, keys: &[&str]) -> Option<&'a Yaml> {
    let mut cur = v;
    for k in keys {
        cur = match cur {
            Yaml::Sequence(seq) => seq.get(k.parse::<usize>().ok()?)?,
            _ => cur.get(*k)?,
        };
    }
    Some(cur)
}

fn str_at<'a>(v: &'a Yaml, keys: &[&str]) -> Option<&'a str> {
    at(v, keys).and_then(Yaml::as_str)
}

fn kubernetes_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// All Kubernetes objects in deploy/kubernetes (the kustomization file excluded), with their file.
fn kubernetes_objects() -> Vec<(PathBuf, Yaml)> {
    let mut out = Vec::new();
    for path in files_ending_in(&kubernetes_dir(), &[".yaml", ".yml"]) {
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        for doc in yaml_documents(&path) {
            out.push((path.clone(), doc));
        }
    }
    out
}

fn kubernetes_object(kind: &str, name: &str) -> Yaml {
    kubernetes_objects()
        .into_iter()
        .map(|(_, doc)| doc)
        .find(|doc| {
            str_at(doc, &["kind"]) == Some(kind) && str_at(doc, &["metadata", "name"]) == Some(name)
        })
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
}

fn gateway_deployment() -> Yaml {
    kubernetes_object("Deployment", "wetrials-gateway")
}

fn gateway_container(deployment: &Yaml) -> &Yaml {
    let containers = at(deployment, &["spec", "template", "spec", "containers"])
        .and_then(Yaml::as_sequence)
        .expect("Deployment has containers");
    containers
        .iter()
        .find(|c| str_at(c, &["name"]) == Some("gateway"))
        .expect("a container named `gateway`")
}

/// The gateway.toml text embedded in the ConfigMap.
fn configmap_gateway_toml() -> String {
    let cm = kubernetes_object("ConfigMap", "wetrials-gateway-config");
    str_at(&cm, &["data", "gateway.toml"])
        .expect("ConfigMap data has a gateway.toml key")
        .to_string()
}

fn configmap_gateway_table() -> toml::Table {
    toml::from_str::<toml::Table>(&configmap_gateway_toml())
        .unwrap_or_else(|e| panic!("the ConfigMap's gateway.toml is not valid TOML: {e}"))
}

/// Port number of a probe: a number, or the name of one of the container's ports.
fn probe_port(container: &Yaml, probe: &str) -> u64 {
    let port = at(container, &[probe, "httpGet", "port"])
        .unwrap_or_else(|| panic!("{probe} has an httpGet port"));
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("probe port is a number or a name");
    container_port(container, name)
}

fn container_port(container: &Yaml, name: &str) -> u64 {
    at(container, &["ports"])
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .find(|p| str_at(p, &["name"]) == Some(name))
        .and_then(|p| at(p, &["containerPort"]))
        .and_then(Yaml::as_u64)
        .unwrap_or_else(|| panic!("container has no port named {name}"))
}

fn listen_port(listen: &str) -> u64 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen:?} is not host:port"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn promtool_missing_message() -> String {
    "promtool is not installed: it comes from the Debian package `prometheus`, which the project's \
     test command (.ci/run) installs; install it with `apt-get install -y prometheus`"
        .to_string()
}

/// Runs promtool with `args` in `dir`; fails the test when promtool is missing.
fn promtool(dir: &Path, args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{}", promtool_missing_message())
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn alerts_path() -> PathBuf {
    deploy_dir().join("prometheus").join("alerts.yml")
}

fn dashboard_path() -> PathBuf {
    deploy_dir().join("grafana").join("wetrials-gateway.json")
}

/// Every gateway metric referenced by the alert rules and the Grafana dashboard (expressions,
/// annotations and descriptions alike), histogram suffixes normalised to the base name.
pub fn metric_names_used() -> BTreeSet<String> {
    let mut names = metric_names_in(&read(&alerts_path()));
    names.extend(metric_names_in(&read(&dashboard_path())));
    names
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(&dashboard_path()))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", dashboard_path().display()))
}

/// Panels of the dashboard, rows' nested panels included.
fn dashboard_panels(d: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"]
        .as_array()
        .expect("dashboard has a panels array")
    {
        out.push(p.clone());
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter().cloned());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// YAML and Kubernetes objects

#[test]
fn deploy_every_yaml_file_parses() {
    let files = files_ending_in(&deploy_dir(), &[".yaml", ".yml"]);
    assert!(
        files.len() >= 12,
        "expected the manifests and Prometheus files, found {files:?}"
    );
    for path in &files {
        let docs = yaml_documents(path);
        assert!(!docs.is_empty(), "{} has no YAML document", path.display());
    }
}

#[test]
fn deploy_kubernetes_objects_have_api_version_kind_and_name() {
    let objects = kubernetes_objects();
    assert!(
        objects.len() >= 8,
        "expected at least 8 Kubernetes objects, found {}",
        objects.len()
    );
    for (path, doc) in &objects {
        let file = path.display();
        assert!(
            str_at(doc, &["apiVersion"]).is_some_and(|s| !s.is_empty()),
            "{file}: object without apiVersion"
        );
        assert!(
            str_at(doc, &["kind"]).is_some_and(|s| !s.is_empty()),
            "{file}: object without kind"
        );
        assert!(
            str_at(doc, &["metadata", "name"]).is_some_and(|s| !s.is_empty()),
            "{file}: {:?} without metadata.name",
            str_at(doc, &["kind"])
        );
        // Namespace-less: the namespace comes from kubectl/kustomize.
        assert!(
            at(doc, &["metadata", "namespace"]).is_none(),
            "{file}: manifests must not pin a namespace"
        );
    }
    let kinds: BTreeSet<&str> = objects
        .iter()
        .filter_map(|(_, d)| str_at(d, &["kind"]))
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ] {
        assert!(
            kinds.contains(kind),
            "no {kind} in deploy/kubernetes (found {kinds:?})"
        );
    }
}

#[test]
fn deploy_kustomization_lists_every_manifest_except_the_secret_example() {
    let kustomization = kubernetes_dir().join("kustomization.yaml");
    let doc = yaml_documents(&kustomization).remove(0);
    assert_eq!(str_at(&doc, &["kind"]), Some("Kustomization"));
    let listed: BTreeSet<String> = at(&doc, &["resources"])
        .and_then(Yaml::as_sequence)
        .expect("kustomization has resources")
        .iter()
        .map(|r| r.as_str().expect("resource is a path").to_string())
        .collect();
    for r in &listed {
        assert!(
            kubernetes_dir().join(r).is_file(),
            "kustomization lists {r}, which does not exist"
        );
    }
    for path in files_ending_in(&kubernetes_dir(), &[".yaml", ".yml"]) {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name == "kustomization.yaml" {
            continue;
        }
        if name.contains(".example.") {
            // Applying a placeholder Secret would overwrite the real certificate.
            assert!(
                !listed.contains(&name),
                "{name} is an example and must not be a kustomize resource"
            );
        } else {
            assert!(
                listed.contains(&name),
                "{name} is not listed in kustomization.yaml"
            );
        }
    }
}

#[test]
fn deploy_deployment_has_three_replicas_readiness_readyz_and_liveness_healthz() {
    let d = gateway_deployment();
    assert_eq!(
        at(&d, &["spec", "replicas"]).and_then(Yaml::as_u64),
        Some(3)
    );
    assert_eq!(
        at(&d, &["spec", "strategy", "rollingUpdate", "maxUnavailable"]).and_then(Yaml::as_u64),
        Some(0),
        "rolling updates must not take a replica away before its successor is ready"
    );
    let c = gateway_container(&d);
    assert_eq!(
        str_at(c, &["readinessProbe", "httpGet", "path"]),
        Some("/readyz")
    );
    assert_eq!(
        str_at(c, &["livenessProbe", "httpGet", "path"]),
        Some("/healthz")
    );
    assert!(
        at(c, &["startupProbe", "httpGet", "path"]).is_some(),
        "startupProbe missing"
    );
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(
            probe_port(c, probe),
            9091,
            "{probe} must hit the admin listener"
        );
    }
    // Selector matches the pod labels.
    let selector = at(&d, &["spec", "selector", "matchLabels"])
        .and_then(Yaml::as_mapping)
        .expect("selector");
    let labels = at(&d, &["spec", "template", "metadata", "labels"])
        .and_then(Yaml::as_mapping)
        .expect("labels");
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "pod template lacks selector label {k:?}"
        );
    }
}

#[test]
fn deploy_deployment_is_locked_down_and_resourced() {
    let d = gateway_deployment();
    let pod = at(&d, &["spec", "template", "spec"]).expect("pod spec");
    let c = gateway_container(&d);
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).and_then(Yaml::as_bool),
        Some(true)
    );
    assert_eq!(
        at(pod, &["securityContext", "runAsUser"]).and_then(Yaml::as_u64),
        Some(10001)
    );
    assert_eq!(
        at(c, &["securityContext", "readOnlyRootFilesystem"]).and_then(Yaml::as_bool),
        Some(true)
    );
    assert_eq!(
        at(c, &["securityContext", "allowPrivilegeEscalation"]).and_then(Yaml::as_bool),
        Some(false)
    );
    assert_eq!(
        str_at(c, &["securityContext", "capabilities", "drop", "0"]),
        Some("ALL")
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                at(c, &["resources", kind, res]).is_some(),
                "resources.{kind}.{res} missing"
            );
        }
    }
    let env: Vec<&str> = at(c, &["env"])
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|e| str_at(e, &["name"]))
        .collect();
    assert!(
        env.contains(&"REDIS_URL"),
        "REDIS_URL is not set (the ConfigMap uses ${{REDIS_URL}})"
    );
    let ann = at(&d, &["spec", "template", "metadata", "annotations"]).expect("pod annotations");
    assert_eq!(str_at(ann, &["prometheus.io/scrape"]), Some("true"));
    assert_eq!(
        str_at(ann, &["prometheus.io/port"]).and_then(|p| p.parse::<u64>().ok()),
        Some(container_port(c, "admin")),
        "prometheus.io/port must be the admin port"
    );
}

#[test]
fn deploy_deployment_termination_grace_covers_pre_stop_and_drain() {
    let d = gateway_deployment();
    let pod = at(&d, &["spec", "template", "spec"]).expect("pod spec");
    let c = gateway_container(&d);
    let termination = at(pod, &["terminationGracePeriodSeconds"])
        .and_then(Yaml::as_u64)
        .expect("terminationGracePeriodSeconds");
    let pre_stop = at(c, &["lifecycle", "preStop", "exec", "command"])
        .and_then(Yaml::as_sequence)
        .expect("preStop exec command");
    assert_eq!(
        pre_stop.first().and_then(Yaml::as_str),
        Some("sleep"),
        "preStop should sleep"
    );
    let sleep: u64 = pre_stop
        .get(1)
        .and_then(Yaml::as_str)
        .and_then(|s| s.parse().ok())
        .expect("sleep seconds");
    let grace = configmap_gateway_table()
        .get("server")
        .and_then(|s| s.get("grace_period_secs"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(30) as u64;
    assert!(
        termination > sleep + grace,
        "terminationGracePeriodSeconds {termination} must exceed preStop sleep {sleep} + grace_period_secs {grace}"
    );
}

#[test]
fn deploy_pdb_and_hpa_keep_at_least_two_and_scale_three_to_ten() {
    let pdb = kubernetes_object("PodDisruptionBudget", "wetrials-gateway");
    assert_eq!(
        at(&pdb, &["spec", "minAvailable"]).and_then(Yaml::as_u64),
        Some(2)
    );
    let hpa = kubernetes_object("HorizontalPodAutoscaler", "wetrials-gateway");
    assert_eq!(str_at(&hpa, &["apiVersion"]), Some("autoscaling/v2"));
    assert_eq!(
        at(&hpa, &["spec", "minReplicas"]).and_then(Yaml::as_u64),
        Some(3)
    );
    assert_eq!(
        at(&hpa, &["spec", "maxReplicas"]).and_then(Yaml::as_u64),
        Some(10)
    );
    assert_eq!(
        str_at(&hpa, &["spec", "scaleTargetRef", "name"]),
        Some("wetrials-gateway")
    );
    assert_eq!(
        at(
            &hpa,
            &[
                "spec",
                "metrics",
                "0",
                "resource",
                "target",
                "averageUtilization"
            ]
        )
        .and_then(Yaml::as_u64),
        Some(70)
    );
}

#[test]
fn deploy_service_selects_the_gateway_pods_and_named_ports() {
    let svc = kubernetes_object("Service", "wetrials-gateway");
    let d = gateway_deployment();
    let labels = at(&d, &["spec", "template", "metadata", "labels"])
        .and_then(Yaml::as_mapping)
        .expect("labels");
    let selector = at(&svc, &["spec", "selector"])
        .and_then(Yaml::as_mapping)
        .expect("service selector");
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "Service selector {k:?} does not match the pods"
        );
    }
    let c = gateway_container(&d);
    let ports: BTreeMap<u64, String> = at(&svc, &["spec", "ports"])
        .and_then(Yaml::as_sequence)
        .expect("service ports")
        .iter()
        .map(|p| {
            let target = str_at(p, &["targetPort"]).expect("named targetPort");
            container_port(c, target); // panics when the name is not a container port
            (
                at(p, &["port"]).and_then(Yaml::as_u64).expect("port"),
                target.to_string(),
            )
        })
        .collect();
    assert!(
        ports.contains_key(&8080) && ports.contains_key(&9091),
        "service ports: {ports:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The ConfigMap's gateway.toml

#[test]
fn deploy_configmap_gateway_toml_is_valid_toml() {
    let t = configmap_gateway_table();
    let get = |path: &[&str]| -> Option<&toml::Value> {
        let mut cur = t.get(path[0])?;
        for k in &path[1..] {
            cur = cur.get(*k)?;
        }
        Some(cur)
    };
    let s = |path: &[&str]| get(path).and_then(toml::Value::as_str).map(str::to_string);
    assert_eq!(s(&["rate_limit", "backend"]).as_deref(), Some("redis"));
    assert_eq!(
        s(&["rate_limit", "redis_url"]).as_deref(),
        Some("${REDIS_URL}")
    );
    assert!(
        s(&["server", "listen"]).is_some_and(|l| l.starts_with("0.0.0.0:")),
        "server must listen on all interfaces"
    );
    assert!(
        s(&["admin", "listen"]).is_some_and(|l| l.starts_with("0.0.0.0:")),
        "admin must listen on all interfaces"
    );

    // Listeners match the container ports.
    let d = gateway_deployment();
    let c = gateway_container(&d);
    assert_eq!(
        listen_port(&s(&["server", "listen"]).unwrap()),
        container_port(c, "https")
    );
    assert_eq!(
        listen_port(&s(&["admin", "listen"]).unwrap()),
        container_port(c, "admin")
    );

    // TLS files live where the Secret is mounted.
    if get(&["server", "tls"]).is_some() {
        let mounts = at(c, &["volumeMounts"])
            .and_then(Yaml::as_sequence)
            .expect("volumeMounts");
        let tls_dir = mounts
            .iter()
            .find(|m| str_at(m, &["name"]) == Some("tls"))
            .and_then(|m| str_at(m, &["mountPath"]))
            .expect("a `tls` volume mount");
        for key in ["cert_path", "key_path"] {
            let p = s(&["server", "tls", key]).unwrap_or_default();
            assert!(
                p.starts_with(&format!("{tls_dir}/")),
                "server.tls.{key} {p:?} is not under {tls_dir}"
            );
        }
    }

    // Routes: unique names, known upstreams, the documented OAuth limits.
    let upstreams: BTreeSet<&str> = get(&["upstreams"])
        .and_then(toml::Value::as_array)
        .expect("[[upstreams]]")
        .iter()
        .filter_map(|u| u.get("name").and_then(toml::Value::as_str))
        .collect();
    let routes = get(&["routes"])
        .and_then(toml::Value::as_array)
        .expect("[[routes]]");
    let mut names = BTreeSet::new();
    let mut limits = BTreeMap::new();
    let mut scopes = BTreeSet::new();
    for r in routes {
        let name = r
            .get("name")
            .and_then(toml::Value::as_str)
            .expect("route name");
        assert!(names.insert(name), "duplicate route name {name}");
        let up = r
            .get("upstream")
            .and_then(toml::Value::as_str)
            .expect("route upstream");
        assert!(
            upstreams.contains(up),
            "route {name}: unknown upstream {up}"
        );
        // One limit (a table) or several (an array of tables): the first is the documented one.
        let first = r.get("rate_limit").and_then(|rl| match rl {
            toml::Value::Array(all) => all.first(),
            one => Some(one),
        });
        if let Some(rl) = first {
            let requests = rl.get("requests").and_then(toml::Value::as_integer);
            let period = rl
                .get("period")
                .and_then(toml::Value::as_str)
                .map(str::to_string);
            let path = r
                .get("path")
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_string();
            limits.insert(path, (requests, period));
        }
        for s in r
            .get("scopes")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            scopes.insert(s.as_str().unwrap_or_default().to_string());
        }
    }
    for (path, n) in [
        ("/v1/oauth/authorize", 20),
        ("/v1/oauth/token", 60),
        ("/v1/oauth/refresh", 60),
        ("/v1/oauth/userinfo", 120),
    ] {
        assert_eq!(
            limits.get(path),
            Some(&(Some(n), Some("1m".to_string()))),
            "documented limit for {path} is {n} per minute"
        );
    }
    for scope in [
        "read:profile",
        "read:studies",
        "write:studies",
        "read:participants",
        "read:projects",
        "admin:read",
    ] {
        assert!(scopes.contains(scope), "no route requires {scope}");
    }
}

/// The production ConfigMap differs from config/gateway.toml only in what is specific to the
/// cluster (listeners, TLS, Redis, upstream peers): the route table and the issuers are the same.
#[test]
fn deploy_configmap_routes_and_issuers_match_config_gateway_toml() {
    let project_path = repo_root().join("config").join("gateway.toml");
    let project = toml::from_str::<toml::Table>(&read(&project_path))
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", project_path.display()));
    let deployed = configmap_gateway_table();
    for key in ["routes", "issuers"] {
        assert_eq!(
            deployed.get(key),
            project.get(key),
            "[[{key}]] in deploy/kubernetes/configmap.yaml differs from config/gateway.toml: copy the \
             change into the ConfigMap and update the checksum annotation"
        );
    }
}

#[test]
fn deploy_configmap_checksum_annotation_matches_gateway_toml() {
    let d = gateway_deployment();
    let annotated = str_at(
        &d,
        &[
            "spec",
            "template",
            "metadata",
            "annotations",
            "wetrials.com/config-sha256",
        ],
    )
    .expect("pod template annotation wetrials.com/config-sha256");
    let actual = sha256_hex(configmap_gateway_toml().as_bytes());
    assert_eq!(
        annotated, actual,
        "deployment.yaml's wetrials.com/config-sha256 is stale: set it to {actual} so the change rolls out"
    );
}

/// Rewrites what only exists inside the cluster so `check` can judge the rest as written: the
/// TLS files (the Secret's mount) become a throwaway self-signed pair, and upstream host names
/// that do not resolve here (in-cluster Service names) become 127.0.0.1 with the same port.
fn localise_for_check(table: &mut toml::Table, dir: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(tls) = table
        .get_mut("server")
        .and_then(|s| s.get_mut("tls"))
        .and_then(toml::Value::as_table_mut)
    {
        let (cert, key) = match self_signed_cert(dir) {
            Ok(pair) => pair,
            Err(e) => {
                // Without openssl, readable non-PEM files: enough for a check that only opens them.
                let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
                std::fs::write(&cert, "not a certificate: openssl was not available\n").unwrap();
                std::fs::write(&key, "not a key: openssl was not available\n").unwrap();
                notes.push(format!("TLS files are stand-ins, not PEM: {e}"));
                (cert, key)
            }
        };
        tls.insert("cert_path".into(), cert.display().to_string().into());
        tls.insert("key_path".into(), key.display().to_string().into());
        notes.push(format!("server.tls -> {}", dir.display()));
    }
    if let Some(ups) = table
        .get_mut("upstreams")
        .and_then(toml::Value::as_array_mut)
    {
        for up in ups {
            let Some(peers) = up.get_mut("peers").and_then(toml::Value::as_array_mut) else {
                continue;
            };
            for peer in peers {
                let Some(p) = peer.as_str().map(str::to_string) else {
                    continue;
                };
                if p.to_socket_addrs().is_ok_and(|mut a| a.next().is_some()) {
                    continue;
                }
                let port = p
                    .rsplit_once(':')
                    .map(|(_, port)| port.to_string())
                    .unwrap_or_default();
                let local = format!("127.0.0.1:{port}");
                notes.push(format!("peer {p} -> {local}"));
                *peer = local.into();
            }
        }
    }
    notes
}

#[test]
fn deploy_configmap_passes_gateway_check() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wetrials-gateway"));
    assert!(bin.is_file(), "gateway binary missing at {}", bin.display());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut table = configmap_gateway_table();
    let notes = localise_for_check(&mut table, dir.path());
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        toml::to_string(&table).expect("serialise gateway.toml"),
    )
    .unwrap();
    let out = Command::new(&bin)
        .arg("check")
        .arg("--config")
        .arg(&file)
        .env("REDIS_URL", "redis://127.0.0.1:6379/0")
        .output()
        .expect("run wetrials-gateway check");
    assert!(
        out.status.success(),
        "`wetrials-gateway check` refused the ConfigMap's gateway.toml (local stand-ins: {notes:?})\n{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus

#[test]
fn deploy_promtool_check_rules_passes() {
    let out = promtool(
        &deploy_dir().join("prometheus"),
        &["check", "rules", "alerts.yml"],
    );
    assert!(
        out.status.success(),
        "promtool check rules alerts.yml failed\n{}",
        describe(&out)
    );
}

#[test]
fn deploy_promtool_rule_unit_tests_pass() {
    let out = promtool(
        &deploy_dir().join("prometheus"),
        &["test", "rules", "alerts.test.yml"],
    );
    assert!(
        out.status.success(),
        "promtool test rules alerts.test.yml failed\n{}",
        describe(&out)
    );
}

const KUBERNETES_SD_ROLES: &[&str] = &[
    "node",
    "service",
    "pod",
    "endpoints",
    "endpointslice",
    "ingress",
];

#[test]
fn deploy_promtool_check_config_passes() {
    let prom_dir = deploy_dir().join("prometheus");
    let out = promtool(&prom_dir, &["check", "config", "prometheus.yml"]);
    if out.status.success() {
        return;
    }
    // Debian builds Prometheus without Kubernetes service discovery ("field
    // kubernetes_sd_configs not found"). Then check everything else as written: each
    // kubernetes_sd_configs block is verified here and swapped for a static target, so promtool
    // still checks the relabelling, rule files and alerting sections.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("field kubernetes_sd_configs not found"),
        "promtool check config prometheus.yml failed\n{}",
        describe(&out)
    );
    let mut config: Yaml =
        serde_yaml_ng::from_str(&read(&prom_dir.join("prometheus.yml"))).unwrap();
    let jobs = config
        .get_mut("scrape_configs")
        .and_then(Yaml::as_sequence_mut)
        .expect("scrape_configs");
    let mut swapped = 0;
    for job in jobs.iter_mut() {
        let job = job.as_mapping_mut().expect("scrape config is a mapping");
        let Some(sd) = job.remove("kubernetes_sd_configs") else {
            continue;
        };
        for entry in sd.as_sequence().expect("kubernetes_sd_configs is a list") {
            let role = str_at(entry, &["role"]).expect("kubernetes_sd_configs entry has a role");
            assert!(
                KUBERNETES_SD_ROLES.contains(&role),
                "unknown kubernetes_sd role {role}"
            );
        }
        let static_configs: Yaml =
            serde_yaml_ng::from_str("[{targets: ['192.0.2.1:9091']}]").unwrap();
        job.insert("static_configs".into(), static_configs);
        swapped += 1;
    }
    assert!(
        swapped > 0,
        "promtool failed on kubernetes_sd_configs but none was found"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        serde_yaml_ng::to_string(&config).unwrap(),
    )
    .unwrap();
    std::fs::copy(alerts_path(), dir.path().join("alerts.yml")).unwrap();
    let out = promtool(dir.path(), &["check", "config", "prometheus.yml"]);
    assert!(
        out.status.success(),
        "promtool check config failed (kubernetes_sd_configs swapped for static targets)\n{}",
        describe(&out)
    );
}

#[test]
fn deploy_alert_rules_have_for_severity_and_annotations() {
    let doc = yaml_documents(&alerts_path()).remove(0);
    let groups = at(&doc, &["groups"])
        .and_then(Yaml::as_sequence)
        .expect("groups");
    let mut exprs = Vec::new();
    for g in groups {
        for rule in at(g, &["rules"])
            .and_then(Yaml::as_sequence)
            .expect("rules")
        {
            let name = str_at(rule, &["alert"]).expect("alerting rules only");
            assert!(str_at(rule, &["for"]).is_some(), "{name}: no `for:`");
            assert!(
                matches!(
                    str_at(rule, &["labels", "severity"]),
                    Some("critical" | "warning" | "info")
                ),
                "{name}: severity label must be critical, warning or info"
            );
            for a in ["summary", "description"] {
                assert!(
                    str_at(rule, &["annotations", a]).is_some_and(|s| !s.is_empty()),
                    "{name}: no {a}"
                );
            }
            exprs.push(str_at(rule, &["expr"]).expect("expr").to_string());
        }
    }
    // The situations the SREs asked to be alerted on, by the metric each must watch.
    for (what, metric) in [
        ("JWKS stale", "gateway_jwks_last_success_timestamp_seconds"),
        ("no JWKS keys", "gateway_jwks_keys"),
        ("auth failure spike", "gateway_auth_decisions_total"),
        ("5xx ratio", "gateway_requests_total"),
        ("rate-limit rejections", "gateway_ratelimit_decisions_total"),
        (
            "Redis backend errors",
            "gateway_ratelimit_backend_errors_total",
        ),
        ("not ready", "gateway_ready"),
        ("config reload failures", "gateway_config_reloads_total"),
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no alert on {what} ({metric})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana

#[test]
fn deploy_grafana_dashboard_parses_and_every_panel_has_targets() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion: {}",
        d["schemaVersion"]
    );
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "dashboard uid"
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a `datasource` variable of type prometheus"
    );
    let panels = dashboard_panels(&d);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no targets");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "panel {title}: empty expr"
            );
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {title}: query not bound to $datasource"
            );
            queries += 1;
        }
    }
    assert!(queries >= 15, "only {queries} queries");
}

#[test]
fn deploy_grafana_queries_are_valid_promql() {
    // Grafana's interval variable is not PromQL; the $job/$route variables sit inside strings.
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, p) in dashboard_panels(&d).iter().enumerate() {
        for (j, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_default()
                .replace("$__rate_interval", "5m");
            rules.push_str(&format!(
                "      - record: dashboard:panel{i}_{j}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("dashboard-rules.yml"), rules).unwrap();
    let out = promtool(dir.path(), &["check", "rules", "dashboard-rules.yml"]);
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL\n{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Metric names

#[test]
fn deploy_metric_name_extraction_folds_histogram_series() {
    let names = metric_names_in(
        "rate(gateway_request_duration_seconds_bucket[5m]) gateway_request_duration_seconds_count \
         gateway_ratelimit_fallbacks_total{x=\"y\"} wetrials_gateway_not_a_metric wetrials-gateway",
    );
    let expected: BTreeSet<String> = [
        "gateway_request_duration_seconds",
        "gateway_ratelimit_fallbacks_total",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);
}

#[test]
fn deploy_alerts_and_dashboard_use_only_exported_metrics() {
    let used = metric_names_used();
    assert!(
        used.len() >= 10,
        "suspiciously few metric names found: {used:?}"
    );
    let exported: BTreeSet<String> = EXPORTED_METRICS.iter().map(|s| s.to_string()).collect();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "metrics used by alerts.yml / the dashboard but not exported: {unknown:?}"
    );
}

#[test]
fn deploy_dashboard_shows_every_exported_metric() {
    let shown = metric_names_in(&read(&dashboard_path()));
    let missing: Vec<&&str> = EXPORTED_METRICS
        .iter()
        .filter(|m| !shown.contains(**m))
        .collect();
    assert!(
        missing.is_empty(),
        "exported metrics with no dashboard panel: {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Docker image and systemd unit

/// Serves `responses.len()` connections on a loopback port, answering each with the next status
/// line; returns the port.
fn one_shot_http(responses: Vec<&'static str>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for status in responses {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = [0u8; 1024];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let ok_path = req.starts_with(b"GET /healthz HTTP/1.1\r\n");
            let status = if ok_path { status } else { "400 Bad Request" };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

fn run_healthcheck(port: u16) -> bool {
    Command::new("bash")
        .arg(deploy_dir().join("docker-healthcheck.sh"))
        .env("GATEWAY_ADMIN_PORT", port.to_string())
        .output()
        .expect("run bash deploy/docker-healthcheck.sh")
        .status
        .success()
}

#[test]
fn deploy_docker_healthcheck_passes_only_on_200() {
    assert!(
        run_healthcheck(one_shot_http(vec!["200 OK"])),
        "200 must be healthy"
    );
    assert!(
        !run_healthcheck(one_shot_http(vec!["503 Service Unavailable"])),
        "503 must be unhealthy"
    );
    assert!(
        !run_healthcheck(one_shot_http(vec!["500 Internal Server Error"])),
        "500 must be unhealthy"
    );
    // A port nobody listens on: bind, note the port, close.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(
        !run_healthcheck(closed),
        "a refused connection must be unhealthy"
    );
}

#[test]
fn deploy_dockerfile_builds_small_non_root_image() {
    let text = read(&deploy_dir().join("Dockerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(
        text.contains("ARG RUST_IMAGE=rust:1-bookworm"),
        "build stage image"
    );
    assert!(
        text.contains("ARG RUNTIME_IMAGE=debian:bookworm-slim"),
        "runtime image"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("FROM ")).count(),
        2,
        "two stages"
    );
    assert!(
        text.contains("cargo build --release --locked"),
        "locked release build"
    );
    assert!(text.contains("cmake"), "pingora-core needs cmake to build");
    assert!(has("USER 10001"), "non-root numeric user");
    assert!(has("EXPOSE 8080 9091"));
    assert!(has("STOPSIGNAL SIGTERM"));
    assert!(has("HEALTHCHECK"));
    // Every file copied from the build context exists (docker build would fail otherwise).
    for l in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = l
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &words[1..words.len() - 1] {
            if *src == "." {
                continue;
            }
            assert!(
                repo_root().join(src).exists(),
                "Dockerfile copies {src}, which is missing from the repository"
            );
        }
    }
    let ignore = read(&deploy_dir().join("Dockerfile.dockerignore"));
    for needed in ["src", "config", "Cargo.toml", "Cargo.lock", "deploy"] {
        assert!(
            !ignore.lines().any(|l| l.trim() == needed),
            "Dockerfile.dockerignore excludes {needed}, which the build needs"
        );
    }
}

#[test]
fn deploy_systemd_unit_reloads_with_sighup_and_is_hardened() {
    let path = deploy_dir()
        .join("systemd")
        .join("wetrials-gateway.service");
    let text = read(&path);
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    let one = |k: &str| keys.get(k).and_then(|v| v.last()).map(String::as_str);
    assert!(
        keys.get("ExecReload")
            .is_some_and(|v| v.iter().any(|c| c == "/bin/kill -HUP $MAINPID")),
        "ExecReload must send SIGHUP"
    );
    assert!(
        one("ExecStart").is_some_and(|c| c.contains("--config /etc/wetrials-gateway/gateway.toml"))
    );
    assert_eq!(one("KillSignal"), Some("SIGTERM"));
    let stop: u64 = one("TimeoutStopSec")
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > 30,
        "TimeoutStopSec must exceed the default 30 s drain"
    );
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one(k), Some(v), "{k}");
    }
    assert!(one("LimitNOFILE").is_some());
    assert!(
        one("User").is_some() || one("DynamicUser") == Some("yes"),
        "runs as a dedicated user"
    );

    // systemd's own parser, when available, with the binary path pointed at something that exists.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let unit = dir.path().join("wetrials-gateway.service");
        std::fs::write(
            &unit,
            text.replace("/usr/local/bin/wetrials-gateway", "/bin/true"),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze");
        // verify exits 0 on unparsable values ("Failed to parse ..., ignoring"): any complaint
        // about a line of this unit fails the test.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("wetrials-gateway.service:"))
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify rejected the unit\n{}",
            describe(&out)
        );
    }
}
