//! Kubernetes: the manifests in `fabric/k8s/` carry every variable the discovery
//! mode (`constellation k8s`) reads, and three daemons given the environment a
//! StatefulSet gives its pods form a working cluster (on loopback, with
//! `--resolve` standing in for the cluster's DNS).
mod util;

use serde_json::Value;
use std::{collections::HashMap, process::Command};
use util::cluster::{deploy_to, workspace_binary, Daemon};

fn manifests() -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fabric/k8s/constellation.json");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the manifests parse");
    list["items"].as_array().expect("a List").clone()
}

#[test]
fn the_manifests_carry_every_field_the_discovery_mode_reads() {
    let items = manifests();
    let find = |kind: &str, name: &str| {
        items.iter().find(|i| i["kind"] == kind && i["metadata"]["name"] == name).cloned().expect(name)
    };
    let set = find("StatefulSet", "constellation");
    let headless = find("Service", "constellation");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(set["spec"]["serviceName"], "constellation");
    find("Service", "constellation-bridge");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"], serde_json::json!(["constellation", "k8s"]));
    let env: HashMap<String, Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    for (name, _) in constellation_fabric::k8s::VARIABLES {
        assert!(env.contains_key(name), "the StatefulSet does not set {name}");
    }
    assert_eq!(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(env["CONSTELLATION_SERVICE"]["value"], headless["metadata"]["name"]);
    assert_eq!(env["CONSTELLATION_REPLICAS"]["value"], set["spec"]["replicas"].to_string());
    let memory = &env["CONSTELLATION_MEM"]["valueFrom"]["resourceFieldRef"];
    assert_eq!((&memory["resource"], &memory["divisor"]), (&"limits.memory".into(), &"1".into()));
    let cpu = &env["CONSTELLATION_CPU"]["valueFrom"]["resourceFieldRef"];
    assert_eq!((&cpu["resource"], &cpu["divisor"]), (&"limits.cpu".into(), &"1m".into()));
    assert!(env["CONSTELLATION_COOKIE"]["valueFrom"]["secretKeyRef"]["key"].is_string());
    assert!(
        container["resources"]["limits"]["memory"].is_string() && container["resources"]["limits"]["cpu"].is_string()
    );
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_discovery_mode_forms_a_cluster_from_a_statefulsets_environment() {
    let (port, bridge_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("constellation-test-k8s-{}", std::process::id()));
    let cookie = "a cookie from a Secret";
    let pod = |ordinal: u32, prefix: &str| {
        let mut command = Command::new(workspace_binary("constellation"));
        command.args(["k8s", "--work-dir"]).arg(dir.join(format!("pod{ordinal}")));
        for i in 0..3 {
            command.arg("--resolve").arg(format!("constellation-{i}.constellation=127.0.0.{}", i + 1));
        }
        command
            .env("POD_NAME", format!("constellation-{ordinal}"))
            .env("POD_IP", format!("127.0.0.{}", ordinal + 1))
            .env("CONSTELLATION_SERVICE", "constellation")
            .env("CONSTELLATION_REPLICAS", "3")
            .env("CONSTELLATION_MEM", (2u64 << 30).to_string())
            .env("CONSTELLATION_CPU", "1000")
            .env("CONSTELLATION_PORT", port.to_string())
            .env("CONSTELLATION_BRIDGE_PORT", bridge_port.to_string())
            .env("CONSTELLATION_COOKIE", cookie);
        Daemon::start(command, prefix)
    };
    let nodes = [pod(1, "listening on "), pod(2, "listening on ")];
    let master = pod(0, "bridge listening on ");
    assert_eq!(master.addr, format!("127.0.0.1:{bridge_port}"));
    let finished =
        deploy_to(&master.addr, "cluster_scenarios", &[], &["spread", "12"]).env("CONSTELLATION_COOKIE", cookie).run();
    assert_eq!(finished.code, Some(0), "{}\n{}\n{}", finished.stderr_text(), finished.account(), master.log());
    assert_eq!(finished.line("ips:"), "ips: 127.0.0.1,127.0.0.2,127.0.0.3");
    finished.assert_nothing_left();
    drop((master, nodes));
    let _ = std::fs::remove_dir_all(&dir);
}
