//! `crds/` must equal what the Rust types generate. Regenerate with:
//!     UPDATE_CRDS=1 cargo test --test planner crds::
//! (or `cargo run -- crd` and split per CRD).

use accessgrant_operator::api::crds;
use std::path::PathBuf;

fn crd_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crds")
        .join(format!("{name}.yaml"))
}

#[test]
fn crds_dir_matches_the_rust_types() {
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let mut drift = Vec::new();
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let want = format!(
            "---\n{}",
            serde_norway::to_string(&crd).expect("CRD serialises")
        );
        let path = crd_path(&name);
        if update {
            std::fs::create_dir_all(path.parent().expect("crds dir")).expect("create crds/");
            std::fs::write(&path, &want).expect("write CRD");
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            drift.push(path.display().to_string());
        }
    }
    assert!(
        drift.is_empty(),
        "generated CRDs drifted from the Rust types: {drift:?}\nregenerate with: UPDATE_CRDS=1 cargo test --test planner crds::"
    );
}

#[test]
fn crd_command_prints_every_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accessgrant-operator"))
        .arg("crd")
        .output()
        .expect("run accessgrant-operator crd");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let names: Vec<&str> = docs
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "accessgrants.accessgrant.io",
            "accesspolicies.accessgrant.io"
        ]
    );
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let file = std::fs::read_to_string(crd_path(&name)).expect("crds/ file exists");
        assert!(
            text.contains(file.trim_start_matches("---\n")),
            "{name} printed differs from crds/"
        );
    }
}

#[test]
fn every_schema_field_has_a_description() {
    fn walk(v: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (k, child) in props {
                let p = format!("{path}.{k}");
                let is_meta =
                    path.is_empty() && (k == "metadata" || k == "apiVersion" || k == "kind");
                if !is_meta
                    && child
                        .get("description")
                        .and_then(|d| d.as_str())
                        .is_none_or(str::is_empty)
                {
                    missing.push(p.clone());
                }
                walk(child, &p, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    for crd in crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("json");
        let mut missing = Vec::new();
        walk(&schema["openAPIV3Schema"], "", &mut missing);
        // namespaceSelector's inner fields come from k8s-openapi with their own docs.
        assert!(
            missing.is_empty(),
            "fields without a description (kubectl explain shows nothing): {missing:?}"
        );
    }
}
