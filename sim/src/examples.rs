//! Microsoft's official ARM examples (`x-ms-examples`), the contract tests' fixtures.
//!
//! Found in one of two places:
//! - `AZURE_EXAMPLES_DIR`, when set: either a checkout of Microsoft's `azure-rest-api-specs`
//!   (the examples sit under `specification/.../<api-version>/examples/`) or a folder in the
//!   shared layout below;
//! - otherwise `../shared/azure-examples` beside the repository (`jit/` and `pim/`).
//!
//! When neither holds them, [`locate`] fails with one sentence saying what to set: the contract
//! tests fail rather than skip.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The environment variable naming where the examples are.
pub const ENV: &str = "AZURE_EXAMPLES_DIR";

/// Every example the contract tests use: Defender JIT (`Microsoft.Security`, 2020-01-01) ...
pub const JIT: [&str; 6] = [
    "CreateJitNetworkAccessPolicy_example.json",
    "DeleteJitNetworkAccessPolicy_example.json",
    "GetJitNetworkAccessPoliciesResourceGroupLocation_example.json",
    "GetJitNetworkAccessPoliciesSubscription_example.json",
    "GetJitNetworkAccessPolicy_example.json",
    "InitiateJitNetworkAccessPolicy_example.json",
];

/// ... and PIM (`Microsoft.Authorization`, 2020-10-01).
pub const PIM: [&str; 15] = [
    "CancelRoleAssignmentScheduleRequestByName.json",
    "GetEligibleChildResourcesByScope.json",
    "GetRoleAssignmentScheduleByName.json",
    "GetRoleAssignmentScheduleInstanceByName.json",
    "GetRoleAssignmentScheduleInstancesByScope.json",
    "GetRoleAssignmentScheduleRequestByName.json",
    "GetRoleAssignmentScheduleRequestByScope.json",
    "GetRoleAssignmentSchedulesByScope.json",
    "GetRoleEligibilityScheduleInstancesByScope.json",
    "GetRoleEligibilitySchedulesByScope.json",
    "GetRoleManagementPolicyAssignmentByScope.json",
    "GetRoleManagementPolicyByName.json",
    "GetRoleManagementPolicyByScope.json",
    "PutRoleAssignmentScheduleRequest.json",
    "ValidateRoleAssignmentScheduleRequestByName.json",
];

/// The examples found: `jit/NAME.json` / `pim/NAME.json` to the file.
#[derive(Debug, Clone)]
pub struct Examples {
    /// Where they were found (for messages).
    pub source: PathBuf,
    files: BTreeMap<String, PathBuf>,
}

impl Examples {
    /// Every example, as `(jit/NAME.json | pim/NAME.json, path)`, sorted.
    pub fn all(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v.as_path()))
    }

    /// The example `rel` (`jit/NAME.json` or `pim/NAME.json`) as JSON.
    pub fn read(&self, rel: &str) -> Result<Value, String> {
        let path = self
            .files
            .get(rel)
            .ok_or_else(|| format!("{rel} is not one of the examples"))?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
    }
}

fn not_found() -> String {
    format!(
        "Microsoft's Azure REST examples were not found: put the shared fixtures beside the \
         repository (../shared/azure-examples) or set {ENV} to a checkout of \
         https://github.com/Azure/azure-rest-api-specs."
    )
}

/// Finds the examples (see the module docs); `repo_root` is this repository's root.
pub fn locate(repo_root: &Path) -> Result<Examples, String> {
    locate_in(std::env::var_os(ENV).map(PathBuf::from), repo_root)
}

/// [`locate`] with the environment variable's value given.
fn locate_in(env_dir: Option<PathBuf>, repo_root: &Path) -> Result<Examples, String> {
    match env_dir {
        Some(dir) => {
            if dir.join("specification").is_dir() {
                from_specs(&dir)
            } else if dir.join("jit").is_dir() && dir.join("pim").is_dir() {
                from_shared(&dir)
            } else {
                Err(format!(
                    "{ENV}={} holds neither specification/ (an azure-rest-api-specs checkout) \
                     nor jit/ and pim/ (the shared fixtures); {}",
                    dir.display(),
                    not_found()
                ))
            }
        }
        None => {
            let shared = repo_root.join("../shared/azure-examples");
            if shared.is_dir() {
                from_shared(&shared)
            } else {
                Err(not_found())
            }
        }
    }
}

fn complete(source: &Path, files: BTreeMap<String, PathBuf>) -> Result<Examples, String> {
    let missing: Vec<String> = JIT
        .iter()
        .map(|n| format!("jit/{n}"))
        .chain(PIM.iter().map(|n| format!("pim/{n}")))
        .filter(|k| !files.contains_key(k))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} lacks {} of the examples the contract tests use: {}",
            source.display(),
            missing.len(),
            missing.join(", ")
        ));
    }
    Ok(Examples {
        source: source.to_path_buf(),
        files,
    })
}

/// The shared layout: `jit/` and `pim/`, every `.json` file in them.
fn from_shared(dir: &Path) -> Result<Examples, String> {
    let mut files = BTreeMap::new();
    for kind in ["jit", "pim"] {
        let rd = std::fs::read_dir(dir.join(kind))
            .map_err(|e| format!("{}: {e}", dir.join(kind).display()))?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") {
                files.insert(format!("{kind}/{name}"), entry.path());
            }
        }
    }
    complete(dir, files)
}

/// An azure-rest-api-specs checkout: each example by name under its service's folder, in an
/// `examples` folder of the api-version the operator speaks (the folders above it have moved
/// between layouts over the years; the names and versions have not).
fn from_specs(root: &Path) -> Result<Examples, String> {
    let mut files = BTreeMap::new();
    for (kind, service, version, names) in [
        ("jit", "security", "2020-01-01", &JIT[..]),
        ("pim", "authorization", "2020-10-01", &PIM[..]),
    ] {
        let mut found = Vec::new();
        walk(&root.join("specification").join(service), &mut found);
        for name in names {
            let hit = found.iter().find(|p| {
                p.file_name().is_some_and(|f| f == *name)
                    && p.components().any(|c| c.as_os_str() == version)
                    && p.components().any(|c| c.as_os_str() == "examples")
            });
            if let Some(p) = hit {
                files.insert(format!("{kind}/{name}"), p.clone());
            }
        }
    }
    complete(root, files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let p = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&p, out),
            Ok(t) if t.is_file() && p.extension().is_some_and(|e| e == "json") => out.push(p),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "{\"parameters\": {}, \"responses\": {}}").unwrap();
    }

    #[test]
    fn a_specs_checkout_is_searched_by_service_version_and_name() {
        let d = tempfile::tempdir().unwrap();
        for n in JIT {
            put(
                d.path(),
                &format!(
                    "specification/security/resource-manager/Microsoft.Security/stable/2020-01-01/examples/JitNetworkAccessPolicies/{n}"
                ),
            );
            // The same name at another api-version is not taken.
            put(
                d.path(),
                &format!(
                    "specification/security/resource-manager/Microsoft.Security/stable/2015-06-01-preview/examples/{n}"
                ),
            );
        }
        for n in PIM {
            put(
                d.path(),
                &format!(
                    "specification/authorization/resource-manager/Microsoft.Authorization/stable/2020-10-01/examples/{n}"
                ),
            );
        }
        let ex = from_specs(d.path()).unwrap();
        assert_eq!(ex.all().count(), 21);
        for (_, p) in ex.all() {
            let s = p.to_string_lossy();
            assert!(s.contains("2020-01-01") || s.contains("2020-10-01"), "{s}");
        }
        assert!(ex.read("pim/PutRoleAssignmentScheduleRequest.json").is_ok());
    }

    #[test]
    fn a_missing_example_is_named() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "jit/CreateJitNetworkAccessPolicy_example.json");
        std::fs::create_dir_all(d.path().join("pim")).unwrap();
        let err = from_shared(d.path()).unwrap_err();
        assert!(
            err.contains("lacks 20 of the examples")
                && err.contains("jit/GetJitNetworkAccessPolicy_example.json"),
            "{err}"
        );
    }

    #[test]
    fn nothing_found_says_what_to_set_in_one_sentence() {
        // A clone on its own: no ../shared beside it, the variable unset.
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("accessgrant-operator");
        std::fs::create_dir_all(&repo).unwrap();
        let msg = locate_in(None, &repo).unwrap_err();
        assert_eq!(msg, not_found());
        // The variable pointing at the wrong folder says so.
        let wrong = locate_in(Some(repo.clone()), &repo).unwrap_err();
        assert!(wrong.contains("holds neither specification/"), "{wrong}");
        // The shared layout beside the clone is found without the variable.
        for n in JIT {
            put(d.path(), &format!("shared/azure-examples/jit/{n}"));
        }
        for n in PIM {
            put(d.path(), &format!("shared/azure-examples/pim/{n}"));
        }
        assert_eq!(locate_in(None, &repo).unwrap().all().count(), 21);
        assert!(
            msg.contains(ENV) && msg.contains("azure-rest-api-specs"),
            "{msg}"
        );
        assert_eq!(msg.matches(". ").count(), 0, "one sentence: {msg}");
        assert!(msg.ends_with('.'));
    }
}
