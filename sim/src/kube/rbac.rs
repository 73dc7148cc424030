//! Authorization the Kubernetes way: RBAC (`rbac.authorization.k8s.io/v1` Role, ClusterRole
//! with aggregation rules, RoleBinding, ClusterRoleBinding) over every request's attributes
//! (verb, API group, resource, subresource, name, namespace), impersonation checks, the
//! `Forbidden` answers kube-apiserver gives, and the access reviews `kubectl auth can-i` uses
//! (SelfSubjectAccessReview, SubjectAccessReview, SelfSubjectRulesReview).
//!
//! As in kube-apiserver, the group `system:masters` is allowed everything without a rule (the
//! kubeconfig's admin is in it, and a `cluster-admin` binding for the group is seeded too);
//! every authenticated user may discover the API and review its own access
//! (`system:discovery`, `system:basic-user`). Finalizers are edited through the object itself,
//! so removing one needs `update`/`patch` on the resource, as in a real cluster; the
//! `X/finalizers` subresource is only a rule a review can ask about (OwnerReferences
//! admission).

use std::collections::BTreeSet;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::error::{ApiError, ApiResult, gr_string};
use super::registry::StoreKey;
use super::server::{Inner, json_response};

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// Empty for cluster-scoped requests (and for requests across all namespaces).
    pub namespace: String,
}

impl Attributes {
    pub fn new(verb: &str, group: &str, resource: &str) -> Self {
        Self {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            ..Default::default()
        }
    }
    fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// One PolicyRule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

/// The strings of a JSON array (none when it is not one).
pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Rule {
    fn parse(v: &Value) -> Self {
        Self {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    fn to_json(&self) -> Value {
        let mut r = json!({"verbs": self.verbs});
        if !self.non_resource_urls.is_empty() {
            r["nonResourceURLs"] = json!(self.non_resource_urls);
            return r;
        }
        r["apiGroups"] = json!(self.api_groups);
        r["resources"] = json!(self.resources);
        if !self.resource_names.is_empty() {
            r["resourceNames"] = json!(self.resource_names);
        }
        r
    }

    /// kube-apiserver's RuleAllows (pkg/apis/rbac/v1/evaluation_helpers.go).
    pub fn allows(&self, a: &Attributes) -> bool {
        let verb = self.verbs.iter().any(|v| v == "*" || *v == a.verb);
        let group = self.api_groups.iter().any(|g| g == "*" || *g == a.group);
        let combined = a.resource_path();
        let resource = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
        });
        let name = self.resource_names.is_empty()
            || (!a.name.is_empty() && self.resource_names.contains(&a.name));
        verb && group && resource && name
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";

fn role_rules(v: &Value) -> Vec<Rule> {
    v["rules"]
        .as_array()
        .map(|a| a.iter().map(Rule::parse).collect())
        .unwrap_or_default()
}

/// A ClusterRole's rules, with those of the ClusterRoles its aggregationRule selects (as the
/// aggregation controller would have written them into `rules`).
fn cluster_role_rules(inner: &Inner, name: &str) -> Vec<Rule> {
    let key = StoreKey::new(RBAC, "clusterroles");
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        let Some(role) = inner.store.get(&key, "", &n) else {
            continue;
        };
        out.extend(role_rules(&role));
        let Some(selectors) = role["aggregationRule"]["clusterRoleSelectors"].as_array() else {
            continue;
        };
        for (_, other) in inner.store.list(&key, None) {
            let o = other.value();
            let labels = &o["metadata"]["labels"];
            if selectors
                .iter()
                .any(|s| super::admission::selector_matches(s, labels))
                && let Some(on) = o["metadata"]["name"].as_str()
            {
                todo.push(on.to_string());
            }
        }
    }
    out
}

fn subject_matches(s: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str().unwrap_or_default() {
        "User" => user.username == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = s["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.username == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn binds(binding: &Value, user: &UserInfo, ns: &str) -> bool {
    binding["subjects"]
        .as_array()
        .is_some_and(|ss| ss.iter().any(|s| subject_matches(s, user, ns)))
}

/// Every rule that applies to `user` in `namespace` ("" for cluster scope): the ClusterRoles
/// of its ClusterRoleBindings, and the roles of its RoleBindings in that namespace.
pub(crate) fn rules_for(inner: &Inner, user: &UserInfo, namespace: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    for (_, b) in inner
        .store
        .list(&StoreKey::new(RBAC, "clusterrolebindings"), None)
    {
        let b = b.value();
        if binds(&b, user, "") && b["roleRef"]["kind"] == "ClusterRole" {
            out.extend(cluster_role_rules(
                inner,
                b["roleRef"]["name"].as_str().unwrap_or_default(),
            ));
        }
    }
    if !namespace.is_empty() {
        for (_, b) in inner
            .store
            .list(&StoreKey::new(RBAC, "rolebindings"), Some(namespace))
        {
            let b = b.value();
            if !binds(&b, user, namespace) {
                continue;
            }
            let role = b["roleRef"]["name"].as_str().unwrap_or_default();
            match b["roleRef"]["kind"].as_str() {
                Some("ClusterRole") => out.extend(cluster_role_rules(inner, role)),
                Some("Role") => {
                    if let Some(r) = inner
                        .store
                        .get(&StoreKey::new(RBAC, "roles"), namespace, role)
                    {
                        out.extend(role_rules(&r));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// What every authenticated user may do without a binding (`system:basic-user`: review its
/// own access; `system:discovery` is served before authorization).
fn always_allowed(user: &UserInfo, a: &Attributes) -> bool {
    let authenticated = user.groups.iter().any(|g| g == "system:authenticated");
    authenticated
        && a.verb == "create"
        && ((a.group == "authorization.k8s.io"
            && matches!(
                a.resource.as_str(),
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
            ))
            || (a.group == "authentication.k8s.io" && a.resource == "selfsubjectreviews"))
}

/// Whether `user` may do `a`.
pub fn allowed(inner: &Inner, user: &UserInfo, a: &Attributes) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") || always_allowed(user, a) {
        return true;
    }
    rules_for(inner, user, &a.namespace)
        .iter()
        .any(|r| r.non_resource_urls.is_empty() && r.allows(a))
}

/// kube-apiserver's Forbidden answer for `a`.
pub fn forbidden(user: &UserInfo, a: &Attributes) -> ApiError {
    let gr = gr_string(&a.group, &a.resource);
    let what = if a.name.is_empty() {
        gr
    } else {
        format!("{gr} \"{}\"", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let mut e = ApiError::forbidden(format!(
        "{what} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        user.username,
        a.verb,
        a.resource_path(),
        a.group
    ));
    let mut details = json!({"group": a.group, "kind": a.resource});
    if !a.name.is_empty() {
        details["name"] = json!(a.name);
    }
    e.details = Some(details);
    e
}

/// Checks `a` for `user`: Ok, or the Forbidden answer.
pub fn authorize(inner: &Inner, user: &UserInfo, a: &Attributes) -> ApiResult<()> {
    if allowed(inner, user, a) {
        Ok(())
    } else {
        Err(forbidden(user, a))
    }
}

// ---------------------------------------------------------------- impersonation

/// The user a request acts as: the authenticated one, or the one it impersonates
/// (`Impersonate-User`, `-Group`, `-Uid` headers, as `kubectl --as/--as-group` send) when the
/// authenticated user may `impersonate` each of them.
pub(crate) fn impersonate(
    inner: &Inner,
    real: UserInfo,
    headers: &HeaderMap,
) -> ApiResult<UserInfo> {
    let Some(as_user) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .filter(|u| !u.is_empty())
    else {
        if headers.contains_key("impersonate-group") {
            return Err(ApiError::internal(
                "requested [{Group ...}] without impersonating a user",
            ));
        }
        return Ok(real);
    };
    let groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let uid = headers
        .get("impersonate-uid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut checks = Vec::new();
    let mut sa_groups = Vec::new();
    if let Some(rest) = as_user.strip_prefix("system:serviceaccount:")
        && let Some((ns, name)) = rest.split_once(':')
    {
        checks.push(Attributes {
            name: name.into(),
            namespace: ns.into(),
            ..Attributes::new("impersonate", "", "serviceaccounts")
        });
        if groups.is_empty() {
            sa_groups = vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
    } else {
        checks.push(Attributes {
            name: as_user.into(),
            ..Attributes::new("impersonate", "", "users")
        });
    }
    for g in &groups {
        checks.push(Attributes {
            name: g.clone(),
            ..Attributes::new("impersonate", "", "groups")
        });
    }
    if let Some(u) = &uid {
        checks.push(Attributes {
            name: u.clone(),
            ..Attributes::new("impersonate", "authentication.k8s.io", "uids")
        });
    }
    for a in &checks {
        authorize(inner, &real, a)?;
    }
    let all: Vec<&str> = groups
        .iter()
        .chain(sa_groups.iter())
        .map(String::as_str)
        .collect();
    let mut u = if as_user == "system:anonymous" {
        UserInfo {
            username: as_user.into(),
            uid: String::new(),
            groups: all.iter().map(|g| g.to_string()).collect(),
        }
    } else {
        UserInfo::new(as_user, &all)
    };
    if let Some(uid) = uid {
        u.uid = uid;
    }
    Ok(u)
}

// ---------------------------------------------------------------- reviews

fn attributes_of(spec: &Value) -> Option<Attributes> {
    let r = spec.get("resourceAttributes")?;
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    Some(Attributes {
        verb: s("verb"),
        group: s("group"),
        resource: s("resource"),
        subresource: s("subresource"),
        name: s("name"),
        namespace: s("namespace"),
    })
}

fn non_resource_allowed(inner: &Inner, user: &UserInfo, spec: &Value) -> bool {
    let path = spec["nonResourceAttributes"]["path"]
        .as_str()
        .unwrap_or_default();
    let verb = spec["nonResourceAttributes"]["verb"]
        .as_str()
        .unwrap_or_default();
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    rules_for(inner, user, "").iter().any(|r| {
        r.verbs.iter().any(|v| v == "*" || v == verb)
            && r.non_resource_urls.iter().any(|u| {
                u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
            })
    })
}

fn review_status(inner: &Inner, user: &UserInfo, spec: &Value) -> Value {
    let allowed = match attributes_of(spec) {
        Some(a) => allowed(inner, user, &a),
        None => non_resource_allowed(inner, user, spec),
    };
    if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by a binding"})
    } else {
        json!({"allowed": false})
    }
}

/// POST of an access review (`authorization.k8s.io/v1`): `resource` is its plural.
pub(crate) fn review(
    inner: &Inner,
    caller: &UserInfo,
    resource: &str,
    namespace: &str,
    body: &Value,
) -> ApiResult<Response> {
    let spec = &body["spec"];
    let (kind, status) = match resource {
        "selfsubjectaccessreviews" => (
            "SelfSubjectAccessReview",
            review_status(inner, caller, spec),
        ),
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let user = spec["user"].as_str().unwrap_or_default();
            let groups = strings(&spec["groups"]);
            let subject = UserInfo {
                username: user.to_string(),
                uid: spec["uid"].as_str().unwrap_or_default().to_string(),
                groups,
            };
            let mut spec = spec.clone();
            if resource == "localsubjectaccessreviews"
                && let Some(ra) = spec.get_mut("resourceAttributes")
            {
                ra["namespace"] = json!(namespace);
            }
            let kind = if resource == "subjectaccessreviews" {
                "SubjectAccessReview"
            } else {
                "LocalSubjectAccessReview"
            };
            (kind, review_status(inner, &subject, &spec))
        }
        "selfsubjectrulesreviews" => {
            let ns = spec["namespace"].as_str().unwrap_or_default();
            let mut rules: Vec<Rule> = if caller.groups.iter().any(|g| g == "system:masters") {
                vec![Rule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    resource_names: vec![],
                    non_resource_urls: vec![],
                }]
            } else {
                rules_for(inner, caller, ns)
            };
            rules.push(Rule {
                verbs: vec!["create".into()],
                api_groups: vec!["authorization.k8s.io".into()],
                resources: vec![
                    "selfsubjectaccessreviews".into(),
                    "selfsubjectrulesreviews".into(),
                ],
                resource_names: vec![],
                non_resource_urls: vec![],
            });
            rules.sort();
            rules.dedup();
            let (res, non): (Vec<&Rule>, Vec<&Rule>) =
                rules.iter().partition(|r| r.non_resource_urls.is_empty());
            (
                "SelfSubjectRulesReview",
                json!({
                    "resourceRules": res.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                    "nonResourceRules": non.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                    "incomplete": false,
                }),
            )
        }
        _ => return Err(ApiError::not_found_path()),
    };
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": kind,
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }),
    ))
}

/// kubectl sends no credentials to a plain-HTTP server, only the kubeconfig's `as`: so with
/// anonymous requests allowed, `system:anonymous` may impersonate (and do nothing else). That
/// is the simulator's stand-in for the admin's client certificate; the bindings are ordinary
/// objects (`kubectl get clusterrolebinding kube-sim:anonymous-impersonator`), and
/// `--no-anonymous` leaves them out.
fn anonymous_impersonator() -> Vec<(&'static str, Value)> {
    vec![
        (
            "clusterroles",
            json!({"metadata": {"name": "kube-sim:anonymous-impersonator"},
                   "rules": [{"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
                             {"apiGroups": ["authentication.k8s.io"], "resources": ["uids", "userextras/*"], "verbs": ["impersonate"]}]}),
        ),
        (
            "clusterrolebindings",
            json!({"metadata": {"name": "kube-sim:anonymous-impersonator"},
                   "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "kube-sim:anonymous-impersonator"},
                   "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "system:anonymous"}]}),
        ),
    ]
}

/// The bootstrap roles: `cluster-admin` bound to `system:masters` and to the kubeconfig's
/// user `kube-sim-admin`, and the user-facing
/// aggregated roles `admin`, `edit` and `view` (empty until a ClusterRole labelled
/// `rbac.authorization.k8s.io/aggregate-to-…: "true"` adds to them).
pub(crate) fn bootstrap(allow_anonymous: bool) -> Vec<(&'static str, Value)> {
    let mut out = vec![
        (
            "clusterroles",
            json!({"metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                   "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                             {"nonResourceURLs": ["*"], "verbs": ["*"]}]}),
        ),
        (
            "clusterrolebindings",
            json!({"metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                   "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": "system:masters"}]}),
        ),
    ];
    // The kubeconfig's admin, by name (kubectl over plain HTTP impersonates it).
    out.push((
        "clusterrolebindings",
        json!({"metadata": {"name": "kube-sim-admin"},
               "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "kube-sim-admin"}]}),
    ));
    if allow_anonymous {
        out.extend(anonymous_impersonator());
    }
    for role in ["admin", "edit", "view"] {
        out.push((
            "clusterroles",
            json!({"metadata": {"name": role, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                   "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{role}"): "true"}}]},
                   "rules": []}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: Value) -> Rule {
        Rule::parse(&v)
    }

    fn attrs(verb: &str, group: &str, res: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: res.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: "ns".into(),
        }
    }

    #[test]
    fn rules_match_like_kube_apiserver() {
        let r = rule(
            json!({"apiGroups": ["accessgrant.io"], "resources": ["accessgrants"], "verbs": ["get", "patch"]}),
        );
        assert!(r.allows(&attrs("patch", "accessgrant.io", "accessgrants", "", "x")));
        // A subresource needs its own rule.
        assert!(!r.allows(&attrs(
            "patch",
            "accessgrant.io",
            "accessgrants",
            "status",
            "x"
        )));
        assert!(!r.allows(&attrs("delete", "accessgrant.io", "accessgrants", "", "x")));
        assert!(!r.allows(&attrs("get", "", "accessgrants", "", "x")));
        let any_status =
            rule(json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}));
        assert!(any_status.allows(&attrs(
            "patch",
            "accessgrant.io",
            "accessgrants",
            "status",
            ""
        )));
        assert!(!any_status.allows(&attrs("patch", "accessgrant.io", "accessgrants", "", "")));
        let all = rule(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}));
        assert!(all.allows(&attrs("patch", "x", "y", "status", "")));
        // resourceNames: only requests that name one of them (never list, or create).
        let named = rule(
            json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["key"], "verbs": ["get", "list", "create"]}),
        );
        assert!(named.allows(&attrs("get", "", "secrets", "", "key")));
        assert!(!named.allows(&attrs("get", "", "secrets", "", "other")));
        assert!(!named.allows(&attrs("list", "", "secrets", "", "")));
        assert!(!named.allows(&attrs("create", "", "secrets", "", "")));
    }

    #[test]
    fn forbidden_reads_like_the_api_server() {
        let u = UserInfo::new("bob", &[]);
        let e = forbidden(
            &u,
            &attrs("patch", "accessgrant.io", "accessgrants", "status", "g1"),
        );
        assert_eq!(e.code, 403);
        assert_eq!(e.reason, "Forbidden");
        assert_eq!(
            e.message,
            "accessgrants.accessgrant.io \"g1\" is forbidden: User \"bob\" cannot patch resource \"accessgrants/status\" in API group \"accessgrant.io\" in the namespace \"ns\""
        );
        let mut a = Attributes::new("list", "", "namespaces");
        a.namespace.clear();
        assert_eq!(
            forbidden(&u, &a).message,
            "namespaces is forbidden: User \"bob\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
        );
    }
}
