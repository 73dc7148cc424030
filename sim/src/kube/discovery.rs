//! Discovery (/version, /api, /apis, group versions) and OpenAPI v3 documents built from the
//! served kinds (CRD schemas included), plus health and OIDC discovery endpoints.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::auth::openid_configuration;
use super::error::{ApiError, ApiResult};
use super::registry::{Builtin, Registry, ResourceDef};
use super::server::{Ctx, Sim, json_response};

pub(crate) const GIT_VERSION: &str = "v1.32.0-kube-sim";

pub(crate) fn route(
    sim: &Arc<Sim>,
    method: &Method,
    segs: &[&str],
    ctx: &Ctx,
) -> ApiResult<Option<Response>> {
    if method != Method::GET {
        return Ok(None);
    }
    let registry = sim.lock().registry.clone();
    let host = sim.base_url.trim_start_matches("http://").to_string();
    let r = match segs {
        ["version"] => json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "32", "gitVersion": GIT_VERSION,
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
                "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": "32",
            }),
        ),
        ["healthz"] | ["livez"] | ["readyz"] => (StatusCode::OK, "ok").into_response(),
        [".well-known", "openid-configuration"] => {
            json_response(StatusCode::OK, &openid_configuration(sim))
        }
        ["openid", "v1", "jwks"] => (
            StatusCode::OK,
            [("content-type", "application/jwk-set+json")],
            sim.signer.jwks().to_string(),
        )
            .into_response(),
        ["api"] => json_response(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}),
        ),
        ["api", "v1"] => json_response(StatusCode::OK, &resource_list(&registry, "", "v1")),
        ["apis"] => json_response(StatusCode::OK, &group_list(&registry)),
        ["apis", g] => match registry.groups().get(*g) {
            Some(vs) => json_response(StatusCode::OK, &api_group(g, vs)),
            None => return Err(ApiError::not_found_path()),
        },
        ["apis", g, v] => {
            if !registry.group_exists(g, v) {
                return Err(ApiError::not_found_path());
            }
            json_response(StatusCode::OK, &resource_list(&registry, g, v))
        }
        ["openapi", "v2"] => {
            let doc = super::openapi_v2::v2_json(&registry);
            if ctx.accept.contains(super::openapi_v2::PROTO_MIME) {
                (
                    StatusCode::OK,
                    // kube-openapi answers the protobuf Accept type with octet-stream
                    [("content-type", "application/octet-stream")],
                    super::openapi_v2::v2_proto(&doc),
                )
                    .into_response()
            } else {
                json_response(StatusCode::OK, &doc)
            }
        }
        ["openapi", "v3"] => json_response(StatusCode::OK, &openapi_v3_index(&registry)),
        ["openapi", "v3", "api", "v1"] => {
            json_response(StatusCode::OK, &openapi_v3_gv(&registry, "", "v1"))
        }
        ["openapi", "v3", "apis", g, v] => {
            if !registry.group_exists(g, v) {
                return Err(ApiError::not_found_path());
            }
            json_response(StatusCode::OK, &openapi_v3_gv(&registry, g, v))
        }
        _ => return Ok(None),
    };
    Ok(Some(r))
}

fn group_version(g: &str, v: &str) -> Value {
    json!({"groupVersion": format!("{g}/{v}"), "version": v})
}

fn api_group(g: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions.iter().map(|v| group_version(g, v)).collect();
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": g,
        "versions": vs,
        "preferredVersion": versions.first().map(|v| group_version(g, v)).unwrap_or(Value::Null),
    })
}

fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .map(|(g, vs)| {
            let mut v = api_group(g, vs);
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            v
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(registry: &Registry, g: &str, v: &str) -> Value {
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    let mut resources = vec![];
    for d in registry.in_group_version(g, v) {
        let mut r = json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced,
            "kind": d.kind, "verbs": d.verbs(),
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        if d.status_sub {
            resources.push(
                json!({"name": format!("{}/status", d.plural), "singularName": "",
                "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
        if d.builtin == Builtin::ServiceAccount {
            resources.push(json!({"name": "serviceaccounts/token", "singularName": "",
                "namespaced": true, "group": "authentication.k8s.io", "version": "v1",
                "kind": "TokenRequest", "verbs": ["create"]}));
        }
        if d.builtin == Builtin::Namespace {
            resources.push(json!({"name": "namespaces/finalize", "singularName": "",
                "namespaced": false, "kind": "Namespace", "verbs": ["update"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// OpenAPI definition name of a kind, as kube-apiserver names them.
pub(crate) fn definition_name(d: &ResourceDef) -> String {
    let prefix = match d.group.as_str() {
        "" => "io.k8s.api.core".to_string(),
        "apiextensions.k8s.io" => {
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_string()
        }
        g if g.ends_with(".k8s.io") => format!("io.k8s.api.{}", g.trim_end_matches(".k8s.io")),
        g => g.split('.').rev().collect::<Vec<_>>().join("."),
    };
    format!("{prefix}.{}.{}", d.version, d.kind)
}

fn gv_hash(doc: &Value) -> String {
    let d = ring::digest::digest(&ring::digest::SHA512, doc.to_string().as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

fn openapi_v3_index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<(String, String)> = vec![("".into(), "v1".into())];
    for (g, vs) in registry.groups() {
        for v in vs {
            gvs.push((g.clone(), v));
        }
    }
    for (g, v) in gvs {
        let (key, url) = if g.is_empty() {
            ("api/v1".to_string(), "/openapi/v3/api/v1".to_string())
        } else {
            (format!("apis/{g}/{v}"), format!("/openapi/v3/apis/{g}/{v}"))
        };
        let hash = gv_hash(&openapi_v3_gv(registry, &g, &v));
        paths.insert(
            key,
            json!({"serverRelativeURL": format!("{url}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

pub(crate) fn object_meta_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "type": "object",
        "properties": {
            "name": s("Name must be unique within a namespace. Cannot be updated."),
            "generateName": s("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "namespace": s("Namespace defines the space within which each name must be unique."),
            "uid": s("UID is the unique in time and space value for this object. Populated by the system. Read-only."),
            "resourceVersion": s("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state. Populated by the system. Read-only."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values that can be used to organize and categorize (scope and select) objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata."},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "set", "description": "Must be empty before the object is deleted from the registry."},
        },
    })
}

pub(crate) fn kind_schema(d: &ResourceDef) -> Value {
    let mut s = match &d.schema {
        Some(s) => s.clone(),
        None => json!({
            "type": "object",
            "description": format!("{} (kube-sim serves this built-in kind without a detailed schema).", d.kind),
            "x-kubernetes-preserve-unknown-fields": true,
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {},
            },
        }),
    };
    if !s["properties"].is_object() {
        s["properties"] = json!({});
    }
    // kube-apiserver adds the TypeMeta fields to every published CRD schema
    if s["properties"]["apiVersion"].is_null() {
        s["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"});
    }
    if s["properties"]["kind"].is_null() {
        s["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"});
    }
    s["properties"]["metadata"] = json!({
        "allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}],
        "default": {},
        "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
    });
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": d.group, "kind": d.kind, "version": d.version}]);
    s
}

pub(crate) fn list_meta_schema() -> Value {
    json!({"type": "object", "description": "ListMeta describes metadata that synthetic resources must have.",
           "properties": {"resourceVersion": {"type": "string", "description": "The version of the list."},
                          "continue": {"type": "string", "description": "Token to retrieve the next page."}}})
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn openapi_v3_gv(registry: &Registry, g: &str, v: &str) -> Value {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    schemas.insert(OBJECT_META.into(), object_meta_schema());
    schemas.insert(LIST_META.into(), list_meta_schema());
    for d in registry.in_group_version(g, v) {
        let name = definition_name(&d);
        schemas.insert(name.clone(), kind_schema(&d));
        schemas.insert(
            format!("{name}List"),
            json!({
                "type": "object", "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                    "metadata": {"allOf": [{"$ref": format!("#/components/schemas/{LIST_META}")}], "default": {}},
                },
                "x-kubernetes-group-version-kind": [{"group": d.group, "kind": d.list_kind(), "version": d.version}],
            }),
        );
        let base = if g.is_empty() {
            format!("/api/{v}")
        } else {
            format!("/apis/{g}/{v}")
        };
        let coll = if d.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", d.plural)
        } else {
            format!("{base}/{}", d.plural)
        };
        let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
        let obj_ref = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}});
        let op = |id: &str, action: &str, params: Vec<Value>| {
            json!({
                "operationId": id, "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK", "content": obj_ref["content"]}},
            })
        };
        let write_params = || {
            vec![
                param("dryRun"),
                param("fieldManager"),
                param("fieldValidation"),
            ]
        };
        let mut patch_params = write_params();
        patch_params.push(param("force"));
        paths.insert(
            coll.clone(),
            json!({
                "get": op(&format!("list{}", d.kind), "list", vec![param("labelSelector"), param("fieldSelector"), param("limit"), param("continue"), param("resourceVersion"), param("watch")]),
                "post": op(&format!("create{}", d.kind), "post", write_params()),
            }),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": op(&format!("read{}", d.kind), "get", vec![]),
                "put": op(&format!("replace{}", d.kind), "put", write_params()),
                "patch": op(&format!("patch{}", d.kind), "patch", patch_params.clone()),
                "delete": op(&format!("delete{}", d.kind), "delete", vec![param("dryRun")]),
            }),
        );
        if d.status_sub {
            paths.insert(
                format!("{coll}/{{name}}/status"),
                json!({
                    "get": op(&format!("read{}Status", d.kind), "get", vec![]),
                    "put": op(&format!("replace{}Status", d.kind), "put", write_params()),
                    "patch": op(&format!("patch{}Status", d.kind), "patch", patch_params),
                }),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
