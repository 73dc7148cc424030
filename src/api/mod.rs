//! The `accessgrant.io/v1alpha1` API: `AccessGrant` (namespaced) and `AccessPolicy`
//! (cluster-scoped). Every field is documented for `kubectl explain`.
#![deny(missing_docs)]

pub mod duration;
pub mod grant;
pub mod policy;

pub use duration::IsoDuration;
pub use grant::*;
pub use policy::*;

use kube::CustomResourceExt;

/// Every CRD this operator owns, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![AccessGrant::crd(), AccessPolicy::crd()]
}

/// All CRDs as one multi-document YAML stream (what `accessgrant-operator crd` prints and what
/// `crds/` holds).
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}
