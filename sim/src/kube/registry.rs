//! Resource types kube-sim serves: the built-ins the operator touches and CRD-defined kinds.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// Where objects of a resource live: one store per group/resource, shared by its versions
/// (and by core/v1 and events.k8s.io/v1 Events, as in kube-apiserver).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct StoreKey {
    pub group: String,
    pub resource: String,
}

impl StoreKey {
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Namespace,
    Secret,
    ConfigMap,
    ServiceAccount,
    Event,
    EventV1,
    Lease,
    MutatingWebhook,
    ValidatingWebhook,
    Crd,
    SelfSubjectReview,
    /// Role, ClusterRole, RoleBinding, ClusterRoleBinding.
    Rbac,
    /// Kinds stored as given, without their controllers or validation (Deployment, Service,
    /// PodDisruptionBudget, NetworkPolicy): enough for `helm install` and `helm upgrade`.
    Opaque,
    /// SelfSubjectAccessReview, SubjectAccessReview, LocalSubjectAccessReview,
    /// SelfSubjectRulesReview: create-only, answered by the authorizer.
    AccessReview,
    Custom,
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub store: StoreKey,
    pub status_sub: bool,
    pub builtin: Builtin,
    /// openAPIV3Schema (custom resources only).
    pub schema: Option<Value>,
    /// additionalPrinterColumns (custom resources only).
    pub columns: Vec<Value>,
    /// selectableFields json paths (custom resources only), e.g. `.spec.color`.
    pub selectable_fields: Vec<String>,
    /// The schema's CEL rules, compiled once.
    pub compiled: Option<Arc<super::schema::CelRules>>,
}

impl ResourceDef {
    /// `plural.group` (or `plural` for the core group), as used in error messages.
    pub fn gr(&self) -> String {
        super::error::gr_string(&self.group, &self.plural)
    }
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    pub fn is_custom(&self) -> bool {
        self.builtin == Builtin::Custom
    }
    /// Whether metadata.generation is maintained (custom resources, CRDs, webhook configs).
    pub fn has_generation(&self) -> bool {
        matches!(
            self.builtin,
            Builtin::Custom | Builtin::Crd | Builtin::MutatingWebhook | Builtin::ValidatingWebhook
        )
    }
    pub fn verbs(&self) -> Vec<&'static str> {
        if matches!(
            self.builtin,
            Builtin::SelfSubjectReview | Builtin::AccessReview
        ) {
            return vec!["create"];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    status_sub: bool,
    b: Builtin,
) -> ResourceDef {
    let store = if b == Builtin::EventV1 {
        StoreKey::new("", "events")
    } else {
        StoreKey::new(group, plural)
    };
    ResourceDef {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        namespaced,
        store,
        status_sub,
        builtin: b,
        schema: None,
        columns: vec![],
        selectable_fields: vec![],
        compiled: None,
    }
}

pub(crate) fn builtin_defs() -> Vec<ResourceDef> {
    vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            &["ns"],
            true,
            Builtin::Namespace,
        ),
        builtin(
            "",
            "v1",
            "Secret",
            "secrets",
            true,
            &[],
            false,
            Builtin::Secret,
        ),
        builtin(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            &["cm"],
            false,
            Builtin::ConfigMap,
        ),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            false,
            Builtin::ServiceAccount,
        ),
        builtin(
            "",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            false,
            Builtin::Event,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            false,
            Builtin::EventV1,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            false,
            Builtin::Lease,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            false,
            &[],
            false,
            Builtin::MutatingWebhook,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            false,
            &[],
            false,
            Builtin::ValidatingWebhook,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            true,
            Builtin::Crd,
        ),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            true,
            Builtin::Opaque,
        ),
        builtin(
            "",
            "v1",
            "Service",
            "services",
            true,
            &["svc"],
            true,
            Builtin::Opaque,
        ),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"],
            true,
            Builtin::Opaque,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            false,
            Builtin::Opaque,
        ),
        builtin(
            "authentication.k8s.io",
            "v1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            false,
            &[],
            false,
            Builtin::SelfSubjectReview,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            false,
            Builtin::Rbac,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            false,
            Builtin::Rbac,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            false,
            Builtin::Rbac,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            false,
            Builtin::Rbac,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
            &[],
            false,
            Builtin::AccessReview,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "SubjectAccessReview",
            "subjectaccessreviews",
            false,
            &[],
            false,
            Builtin::AccessReview,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
            true,
            &[],
            false,
            Builtin::AccessReview,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            false,
            &[],
            false,
            Builtin::AccessReview,
        ),
    ]
}

/// Kubernetes version priority: GA > beta > alpha, higher numbers first, others last.
pub(crate) fn version_priority_key(v: &str) -> (u8, i64, i64, String) {
    let Some(rest) = v.strip_prefix('v') else {
        return (3, 0, 0, v.to_string());
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(major) = digits.parse::<i64>() else {
        return (3, 0, 0, v.to_string());
    };
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (0, -major, 0, String::new());
    }
    for (prefix, rank) in [("beta", 1u8), ("alpha", 2u8)] {
        if let Some(n) = tail.strip_prefix(prefix)
            && let Ok(minor) = n.parse::<i64>()
        {
            return (rank, -major, -minor, String::new());
        }
    }
    (3, 0, 0, v.to_string())
}

/// Builds the served resource definitions of one CustomResourceDefinition object.
pub(crate) fn defs_from_crd(crd: &Value) -> Vec<ResourceDef> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = super::rbac::strings;
    let short_names = strings(&names["shortNames"]);
    let categories = strings(&names["categories"]);
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = vec![];
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        let version = v["name"].as_str().unwrap_or_default().to_string();
        out.push(ResourceDef {
            group: group.clone(),
            version,
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            short_names: short_names.clone(),
            categories: categories.clone(),
            namespaced,
            store: StoreKey::new(&group, &plural),
            status_sub: v["subresources"]["status"].is_object(),
            builtin: Builtin::Custom,
            schema: v["schema"]["openAPIV3Schema"]
                .is_object()
                .then(|| v["schema"]["openAPIV3Schema"].clone()),
            compiled: v["schema"]["openAPIV3Schema"].is_object().then(|| {
                Arc::new(super::schema::CelRules::compile(
                    &v["schema"]["openAPIV3Schema"],
                ))
            }),
            columns: v["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            selectable_fields: v["selectableFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["jsonPath"].as_str().map(str::to_string))
                .collect(),
        });
    }
    out
}

/// All served resource types.
#[derive(Debug, Default, Clone)]
pub(crate) struct Registry {
    pub defs: Vec<Arc<ResourceDef>>,
}

impl Registry {
    pub fn build(crds: &[Value]) -> Self {
        let mut defs: Vec<Arc<ResourceDef>> = builtin_defs().into_iter().map(Arc::new).collect();
        for crd in crds {
            defs.extend(defs_from_crd(crd).into_iter().map(Arc::new));
        }
        Self { defs }
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    pub fn by_store(&self, key: &StoreKey) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| &d.store == key && d.builtin != Builtin::EventV1)
            .cloned()
    }

    pub fn group_exists(&self, group: &str, version: &str) -> bool {
        self.defs
            .iter()
            .any(|d| d.group == group && d.version == version)
    }

    /// Groups (non-core) with their versions in priority order.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in &self.defs {
            if d.group.is_empty() {
                continue;
            }
            let e = m.entry(d.group.clone()).or_default();
            if !e.contains(&d.version) {
                e.push(d.version.clone());
            }
        }
        for vs in m.values_mut() {
            vs.sort_by_key(|v| version_priority_key(v));
        }
        m
    }

    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceDef>> {
        self.defs
            .iter()
            .filter(|d| d.group == group && d.version == version)
            .cloned()
            .collect()
    }
}
