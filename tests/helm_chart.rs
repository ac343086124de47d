//! The Helm chart, rendered by a real `helm template` (Helm built from its
//! Go module by `scripts/setup`): the fields an operator relies on are
//! there, the config it writes is one the service accepts, and values that
//! cannot work are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use attnwatch::config::Config;
use serde::Deserialize;
use serde_yaml::Value;

fn helm() -> PathBuf {
    std::env::var_os("HELM")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/attnwatch/helm-v3.22.0/helm"))
        })
        .filter(|p| p.is_file())
        .expect("helm not found: run scripts/setup (it builds Helm into ~/.cache/attnwatch)")
}

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/attnwatch")
}

/// `helm template` with `--set` values: the documents, or helm's error.
fn render(sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "rel"]).arg(chart());
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

fn kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == k).collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let v = kind(docs, k);
    assert_eq!(v.len(), 1, "one {k}");
    v[0]
}

#[test]
fn helm_lint_passes() {
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn defaults_render_replicas_in_one_group_with_probes_scraping_pdb_and_sized_memory() {
    let docs = render(&[]).unwrap();
    let d = one(&docs, "Deployment");
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"];
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9898");
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    assert!(ann["checksum/config"].as_str().unwrap().len() == 64);
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["ports"][0]["containerPort"], 9898);
    // 192 MiB + 20,000 series x 48 KiB (rounded up) = 1130 MiB; limit 150%.
    assert_eq!(c["resources"]["requests"]["memory"], "1130Mi");
    assert_eq!(c["resources"]["limits"]["memory"], "1695Mi");
    let env: Vec<&str> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"POD_NAME") && env.contains(&"RUST_LOG"),
        "{env:?}"
    );
    assert_eq!(
        c["volumeMounts"][0]["mountPath"], "/etc/attnwatch",
        "the config file the args name"
    );
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap()
            > 30
    );

    // The ConfigMap's file is a config the service accepts, with the group,
    // topics and the per-replica series bound the memory was sized for.
    let cm = one(&docs, "ConfigMap");
    let toml = cm["data"]["attnwatch.toml"].as_str().unwrap();
    let cfg = Config::from_toml_and_env(toml, Vec::<(String, String)>::new()).unwrap();
    assert_eq!(cfg.kafka.group_id, "attnwatch");
    assert_eq!(cfg.kafka.input_topic, "attnwatch-input");
    assert_eq!(cfg.window.max_series, 20_000);
    assert_eq!(cfg.model.stride, 32);
    assert_eq!(cfg.server.listen.port(), 9898);

    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(one(&docs, "Service")["spec"]["ports"][0]["port"], 9898);
    assert!(kind(&docs, "ServiceMonitor").is_empty());
    assert!(kind(&docs, "ScaledObject").is_empty());
}

#[test]
fn statefulset_servicemonitor_and_keda_when_asked() {
    let docs = render(&[
        "workload.kind=StatefulSet",
        "serviceMonitor.enabled=true",
        "keda.enabled=true",
        "kafka.partitions=6",
        "replicaCount=2",
        "sizing.seriesPerReplica=100000",
    ])
    .unwrap();
    assert!(kind(&docs, "Deployment").is_empty());
    let s = one(&docs, "StatefulSet");
    assert_eq!(s["spec"]["serviceName"], "rel-attnwatch-headless");
    assert!(s["spec"]["replicas"].is_null(), "KEDA owns the replicas");
    let services = kind(&docs, "Service");
    assert!(services
        .iter()
        .any(|s| s["spec"]["clusterIP"] == "None"
            && s["metadata"]["name"] == "rel-attnwatch-headless"));
    let mem = &s["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"];
    assert_eq!(mem, "4880Mi", "192 + 100,000 x 48 KiB");
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let so = one(&docs, "ScaledObject");
    assert_eq!(so["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(
        so["spec"]["maxReplicaCount"], 6,
        "bounded by the partitions"
    );
    let t = &so["spec"]["triggers"][0];
    assert_eq!(t["type"], "kafka");
    assert_eq!(t["metadata"]["consumerGroup"], "attnwatch");
    assert_eq!(t["metadata"]["topic"], "attnwatch-input");
    assert_eq!(t["metadata"]["lagThreshold"], "10000");
}

#[test]
fn more_replicas_than_partitions_is_refused() {
    let e = render(&["replicaCount=13"]).unwrap_err();
    assert!(
        e.contains("replicaCount (13) is above kafka.partitions (12)"),
        "{e}"
    );
    let e = render(&["workload.kind=DaemonSet"]).unwrap_err();
    assert!(e.contains("workload.kind must be"), "{e}");
}

fn container(docs: &[Value]) -> &Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn names(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .map(|s| s.iter().map(|e| e["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn config_of(docs: &[Value]) -> Config {
    let toml = one(docs, "ConfigMap")["data"]["attnwatch.toml"]
        .as_str()
        .unwrap();
    Config::from_toml_and_env(toml, Vec::<(String, String)>::new()).unwrap()
}

#[test]
fn no_api_token_by_default_renders_nothing_for_it() {
    let docs = render(&[]).unwrap();
    let c = container(&docs);
    assert!(!names(&c["env"]).contains(&"ATTNWATCH_API_TOKEN"));
    assert_eq!(names(&c["volumeMounts"]), ["config"]);
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(names(&pod["volumes"]), ["config"]);
    let cfg = config_of(&docs);
    assert_eq!(cfg.server.token_source(), None);
    assert!(!cfg.server.protect_metrics);
    let toml = one(&docs, "ConfigMap")["data"]["attnwatch.toml"]
        .as_str()
        .unwrap();
    assert!(!toml.contains("token"), "{toml}");
    // Setting only the other apiToken values changes nothing either.
    let same = render(&["apiToken.key=other", "apiToken.mountAs=env"]).unwrap();
    assert_eq!(same, docs);
}

#[test]
fn alertmanager_is_off_by_default_and_wired_when_given() {
    let cfg = config_of(&render(&[]).unwrap());
    assert!(!cfg.alerting.enabled());
    let docs = render(&[
        "alertmanager.url=http://alertmanager-operated.monitoring:9093",
        "alertmanager.groupBy={host,dc}",
        "alertmanager.gap=10m",
        "alertmanager.pageUrl=https://attnwatch.example",
    ])
    .unwrap();
    let cfg = config_of(&docs);
    assert!(cfg.alerting.enabled());
    assert_eq!(
        cfg.alerting.alertmanager_url,
        "http://alertmanager-operated.monitoring:9093"
    );
    assert_eq!(cfg.alerting.group_by, ["host", "dc"]);
    assert_eq!(cfg.alerting.gap, std::time::Duration::from_secs(600));
    assert_eq!(cfg.alerting.page_url, "https://attnwatch.example");
    let cfg = config_of(&render(&["alertmanager.incidentsTopic=attnwatch-incidents"]).unwrap());
    assert!(cfg.alerting.enabled());
    assert_eq!(cfg.alerting.incidents_topic, "attnwatch-incidents");
    assert!(cfg.alerting.alertmanager_url.is_empty());
}

#[test]
fn feedback_is_off_by_default_and_on_with_a_topic() {
    assert!(!config_of(&render(&[]).unwrap()).feedback.enabled());
    let cfg = config_of(&render(&["feedback.topic=attnwatch-feedback"]).unwrap());
    assert_eq!(cfg.feedback.topic, "attnwatch-feedback");
}

#[test]
fn api_token_from_an_existing_secret_as_a_file() {
    let docs = render(&["apiToken.existingSecret=attnwatch-api", "apiToken.key=tok"]).unwrap();
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "api-token")
        .expect("a secret volume");
    assert_eq!(volume["secret"]["secretName"], "attnwatch-api");
    assert_eq!(volume["secret"]["items"][0]["key"], "tok");
    assert_eq!(volume["secret"]["items"][0]["path"], "token");
    let c = container(&docs);
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "api-token")
        .expect("mounted");
    assert_eq!(mount["mountPath"], "/run/secrets/attnwatch");
    assert_eq!(mount["readOnly"], true);
    assert!(!names(&c["env"]).contains(&"ATTNWATCH_API_TOKEN"));
    // The config names the mounted file, never the token.
    let cfg = config_of(&docs);
    assert_eq!(
        cfg.server.token_source(),
        Some(attnwatch::config::TokenSource::File(
            "/run/secrets/attnwatch/token".into()
        ))
    );
    assert!(!cfg.server.protect_metrics && !cfg.server.protect_health);
    // The probes still reach the open health endpoints.
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
}

#[test]
fn api_token_from_an_existing_secret_as_an_env_var_and_on_metrics() {
    let docs = render(&[
        "apiToken.existingSecret=attnwatch-api",
        "apiToken.mountAs=env",
        "apiToken.protectMetrics=true",
        "prometheusAnnotations=false",
        "serviceMonitor.enabled=true",
    ])
    .unwrap();
    let c = container(&docs);
    let var = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ATTNWATCH_API_TOKEN")
        .expect("the token's variable");
    assert!(var["value"].is_null(), "from the Secret, not a literal");
    assert_eq!(var["valueFrom"]["secretKeyRef"]["name"], "attnwatch-api");
    assert_eq!(var["valueFrom"]["secretKeyRef"]["key"], "token");
    assert_eq!(names(&c["volumeMounts"]), ["config"]);
    let cfg = config_of(&docs);
    assert_eq!(
        cfg.server.token_source(),
        Some(attnwatch::config::TokenSource::Env(
            "ATTNWATCH_API_TOKEN".into()
        ))
    );
    assert!(cfg.server.protect_metrics && !cfg.server.protect_health);
    // Prometheus (through the ServiceMonitor) sends the token; the scrape
    // annotations, which cannot, are off.
    let auth = &one(&docs, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"];
    assert_eq!(auth["type"], "Bearer");
    assert_eq!(auth["credentials"]["name"], "attnwatch-api");
    assert_eq!(auth["credentials"]["key"], "token");
    let ann = &one(&docs, "Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert!(ann["prometheus.io/scrape"].is_null());
    // Without protectMetrics the ServiceMonitor sends nothing.
    let docs = render(&[
        "apiToken.existingSecret=attnwatch-api",
        "serviceMonitor.enabled=true",
    ])
    .unwrap();
    assert!(one(&docs, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"].is_null());
}

#[test]
fn api_token_values_that_cannot_work_are_refused() {
    let e = render(&["apiToken.existingSecret=s", "apiToken.mountAs=volume"]).unwrap_err();
    assert!(e.contains("apiToken.mountAs must be file or env"), "{e}");
    let e = render(&["apiToken.existingSecret=s", "apiToken.key="]).unwrap_err();
    assert!(e.contains("apiToken.key must name"), "{e}");
    let e = render(&["apiToken.protectMetrics=true"]).unwrap_err();
    assert!(e.contains("needs a token"), "{e}");
    let e = render(&["apiToken.existingSecret=s", "apiToken.protectMetrics=true"]).unwrap_err();
    assert!(e.contains("prometheusAnnotations=false"), "{e}");
}

/// The container's env entry named `name`, if any.
fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

/// The file the pod sees for `volume`'s only item: the mount path plus the
/// item's path, and the Secret and key it comes from.
fn secret_file(pod_spec: &Value, volume: &str) -> (String, String, String) {
    let c = &pod_spec["containers"][0];
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("no mount of {volume}"));
    assert_eq!(mount["readOnly"], true);
    let v = pod_spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .unwrap_or_else(|| panic!("no volume {volume}"));
    let items = v["secret"]["items"].as_sequence().unwrap();
    assert_eq!(items.len(), 1, "only the one key is mounted");
    (
        format!(
            "{}/{}",
            mount["mountPath"].as_str().unwrap(),
            items[0]["path"].as_str().unwrap()
        ),
        v["secret"]["secretName"].as_str().unwrap().to_string(),
        items[0]["key"].as_str().unwrap().to_string(),
    )
}

const SASL_SSL: [&str; 3] = [
    "kafka.security.protocol=SASL_SSL",
    "kafka.security.sasl.passwordSecret.name=kafka-user",
    "kafka.security.caSecret.name=kafka-cluster-ca-cert",
];

#[test]
fn sasl_ssl_reads_the_password_from_a_mounted_secret_and_never_writes_it() {
    let mut sets = SASL_SSL.to_vec();
    sets.push("kafka.options.linger\\.ms=5");
    let docs = render(&sets).unwrap();
    let cm = one(&docs, "ConfigMap");
    let toml = cm["data"]["attnwatch.toml"].as_str().unwrap();
    let cfg = Config::from_toml_and_env(toml, Vec::<(String, String)>::new()).unwrap();
    let o = &cfg.kafka.options;
    assert_eq!(o["security.protocol"], "SASL_SSL");
    assert_eq!(o["sasl.mechanism"], "SCRAM-SHA-512");
    assert_eq!(o["sasl.username"], "attnwatch");
    assert_eq!(o["linger.ms"], "5", "kafka.options are passed on");
    for secret in attnwatch::config::SECRET_PROPERTIES {
        assert!(!o.contains_key(secret), "{secret} in [kafka.options]");
    }
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["volumeMounts"][0]["mountPath"], "/etc/attnwatch",
        "the config mount comes first"
    );

    // The password: a file from the Secret's key, named in secret_options.
    let (file, secret, key) = secret_file(pod, "kafka-sasl");
    assert_eq!((secret.as_str(), key.as_str()), ("kafka-user", "password"));
    assert_eq!(
        cfg.kafka.secret_options["sasl.password"],
        attnwatch::config::SecretSource::File(file.into())
    );
    assert!(env_var(c, "KAFKA_SASL_PASSWORD").is_none());
    // The CA: a file from its Secret, named as ssl.ca.location.
    let (file, secret, key) = secret_file(pod, "kafka-ca");
    assert_eq!(
        (secret.as_str(), key.as_str()),
        ("kafka-cluster-ca-cert", "ca.crt")
    );
    assert_eq!(o["ssl.ca.location"], file);
}

#[test]
fn sasl_ssl_can_take_the_password_from_an_env_var_of_the_secret() {
    let mut sets = SASL_SSL.to_vec();
    sets.push("kafka.security.sasl.passwordFrom=env");
    sets.push("kafka.security.sasl.passwordSecret.key=sasl-password");
    let docs = render(&sets).unwrap();
    let toml = one(&docs, "ConfigMap")["data"]["attnwatch.toml"]
        .as_str()
        .unwrap();
    let cfg = Config::from_toml_and_env(toml, Vec::<(String, String)>::new()).unwrap();
    assert_eq!(
        cfg.kafka.secret_options["sasl.password"],
        attnwatch::config::SecretSource::Env("KAFKA_SASL_PASSWORD".into())
    );
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    let var = env_var(&pod["containers"][0], "KAFKA_SASL_PASSWORD").unwrap();
    assert!(var.get("value").is_none(), "never a literal value");
    let r = &var["valueFrom"]["secretKeyRef"];
    assert_eq!(r["name"], "kafka-user");
    assert_eq!(r["key"], "sasl-password");
    assert!(!pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "kafka-sasl"));
    // Plain by default: no security options, no secrets, no extra mounts.
    let docs = render(&[]).unwrap();
    let toml = one(&docs, "ConfigMap")["data"]["attnwatch.toml"]
        .as_str()
        .unwrap();
    let cfg = Config::from_toml_and_env(toml, Vec::<(String, String)>::new()).unwrap();
    assert!(cfg.kafka.options.is_empty() && cfg.kafka.secret_options.is_empty());
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"].as_sequence().unwrap().len(), 1);
}

#[test]
fn sasl_ssl_lints_and_keda_gets_its_authentication() {
    let mut cmd = Command::new(helm());
    cmd.args(["lint", "--strict"]).arg(chart());
    for s in SASL_SSL {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut sets = SASL_SSL.to_vec();
    sets.extend(["keda.enabled=true", "keda.authenticationRef=kafka-auth"]);
    let docs = render(&sets).unwrap();
    let so = one(&docs, "ScaledObject");
    assert_eq!(
        so["spec"]["triggers"][0]["authenticationRef"]["name"],
        "kafka-auth"
    );
}

#[test]
fn secrets_in_the_config_and_incomplete_security_are_refused() {
    for (sets, want) in [
        (
            vec!["kafka.security.protocol=SASL_SSL"],
            "needs kafka.security.sasl.passwordSecret.name",
        ),
        (
            vec!["kafka.options.sasl\\.password=hunter2"],
            "kafka.options.sasl.password is a secret",
        ),
        (
            vec!["kafka.security.protocol=TLS"],
            "kafka.security.protocol must be",
        ),
        (
            vec![
                SASL_SSL[0],
                SASL_SSL[1],
                "kafka.security.sasl.passwordFrom=vault",
            ],
            "passwordFrom must be file or env",
        ),
        (
            vec!["extraConfig=[kafka.options]\n\"linger.ms\" = 5"],
            "extraConfig must not hold [kafka]",
        ),
        (
            vec![SASL_SSL[0], SASL_SSL[1], "keda.enabled=true"],
            "needs keda.authenticationRef",
        ),
    ] {
        let e = render(&sets).unwrap_err();
        assert!(e.contains(want), "{sets:?}: {e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
