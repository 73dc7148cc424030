//! Typed ARM operations on top of [`ArmClient`]: what the controller executes for the planner's
//! writes and reads.

use super::client::{ArmClient, Caller, Replay, parse};
use super::error::AzureError;
use super::models::*;
use crate::api::GrantIdentity;
use crate::lifecycle::{
    AzureWrite, JitPolicyView, PimInstanceView, PimPolicyView, PimRequestView, WriteAnswer,
};
use reqwest::Method;

fn pim_path(scope: &str, tail: &str) -> String {
    let scope = scope.trim_end_matches('/');
    let scope = if scope.starts_with('/') {
        scope.to_string()
    } else {
        format!("/{scope}")
    };
    let scope = if scope == "/" { String::new() } else { scope };
    format!("{scope}/providers/Microsoft.Authorization/{tail}")
}

/// Path of a JIT policy.
pub fn jit_policy_path(sub: &str, rg: &str, location: &str, name: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Security/locations/{location}/jitNetworkAccessPolicies/{name}"
    )
}

/// The Direct instance of (scope, role, principal) among listed items, as the planner sees it.
pub fn instance_in(
    items: &[ScheduleItem],
    scope: &str,
    role: &str,
    principal: &str,
) -> Option<PimInstanceView> {
    items
        .iter()
        .find(|i| i.matches(scope, role, principal))
        .map(ScheduleItem::instance_view)
}

fn caller<'a>(ns: &'a str, identity: &'a Option<GrantIdentity>) -> Caller<'a> {
    match identity {
        Some(id) => Caller::Grant(ns, id),
        None => Caller::Operator,
    }
}

impl ArmClient {
    /// PUT a role assignment schedule request (idempotent by name; safe to replay).
    pub async fn pim_put(
        &self,
        scope: &str,
        name: &str,
        body: &RoleAssignmentScheduleRequest,
        who: &Caller<'_>,
    ) -> Result<PimRequestView, AzureError> {
        let json = serde_json::to_value(body).map_err(|e| AzureError::Invalid {
            status: 0,
            code: "Serialize".into(),
            message: e.to_string(),
        })?;
        let r = self
            .call(
                "RoleAssignmentScheduleRequests_Create",
                Method::PUT,
                &pim_path(scope, &format!("roleAssignmentScheduleRequests/{name}")),
                &[],
                PIM_API_VERSION,
                Some(&json),
                who,
                Replay::Safe,
            )
            .await?;
        let req: RoleAssignmentScheduleRequest = parse(&r.body)?;
        Ok(req.view())
    }

    /// GET a role assignment schedule request by name.
    pub async fn pim_get(
        &self,
        scope: &str,
        name: &str,
        who: &Caller<'_>,
    ) -> Result<Option<PimRequestView>, AzureError> {
        let r: Option<RoleAssignmentScheduleRequest> = self
            .get_json(
                "RoleAssignmentScheduleRequests_Get",
                &pim_path(scope, &format!("roleAssignmentScheduleRequests/{name}")),
                &[],
                PIM_API_VERSION,
                who,
            )
            .await?;
        Ok(r.map(|r| r.view()))
    }

    /// Cancel a pending request.
    pub async fn pim_cancel(
        &self,
        scope: &str,
        name: &str,
        who: &Caller<'_>,
    ) -> Result<(), AzureError> {
        self.call(
            "RoleAssignmentScheduleRequests_Cancel",
            Method::POST,
            &pim_path(
                scope,
                &format!("roleAssignmentScheduleRequests/{name}/cancel"),
            ),
            &[],
            PIM_API_VERSION,
            None,
            who,
            Replay::Safe,
        )
        .await?;
        Ok(())
    }

    /// The active Direct instance of `role` at exactly `scope` for `principal`, if any.
    pub async fn pim_instance(
        &self,
        scope: &str,
        role: &str,
        principal: &str,
    ) -> Result<Option<PimInstanceView>, AzureError> {
        let items = self.pim_instances_for(scope, principal).await?;
        Ok(instance_in(&items, scope, role, principal))
    }

    /// Every schedule instance at, above or below subscription `sub` (one paged list, no
    /// filter): the start-up batch read (see `controller::warm`).
    pub async fn pim_instances_in_subscription(
        &self,
        sub: &str,
    ) -> Result<Vec<ScheduleItem>, AzureError> {
        self.list_all(
            "RoleAssignmentScheduleInstances_ListForScope",
            &pim_path(
                &format!("/subscriptions/{sub}"),
                "roleAssignmentScheduleInstances",
            ),
            &[],
            PIM_API_VERSION,
            &Caller::Operator,
        )
        .await
    }

    /// Every role assignment schedule request at, above or below subscription `sub` (one
    /// paged list): the orphan sweep reads the grant markers in their justifications.
    pub async fn pim_requests_in_subscription(
        &self,
        sub: &str,
    ) -> Result<Vec<RoleAssignmentScheduleRequest>, AzureError> {
        self.list_all(
            "RoleAssignmentScheduleRequests_ListForScope",
            &pim_path(
                &format!("/subscriptions/{sub}"),
                "roleAssignmentScheduleRequests",
            ),
            &[],
            PIM_API_VERSION,
            &Caller::Operator,
        )
        .await
    }

    /// Every JIT network access policy of subscription `sub` (one paged list): the start-up
    /// batch read (see `controller::warm`).
    pub async fn jit_policies_in_subscription(
        &self,
        sub: &str,
    ) -> Result<Vec<JitNetworkAccessPolicy>, AzureError> {
        self.list_all(
            "JitNetworkAccessPolicies_List",
            &format!("/subscriptions/{sub}/providers/Microsoft.Security/jitNetworkAccessPolicies"),
            &[],
            JIT_API_VERSION,
            &Caller::Operator,
        )
        .await
    }

    /// Every instance visible at `scope` for `principal` (for batched reads).
    pub async fn pim_instances_for(
        &self,
        scope: &str,
        principal: &str,
    ) -> Result<Vec<ScheduleItem>, AzureError> {
        let filter = format!("principalId eq '{}'", principal.replace('\'', "''"));
        self.list_all(
            "RoleAssignmentScheduleInstances_ListForScope",
            &pim_path(scope, "roleAssignmentScheduleInstances"),
            &[("$filter", &filter)],
            PIM_API_VERSION,
            &Caller::Operator,
        )
        .await
    }

    /// The role management policy rules for (scope, role); None when none is readable.
    pub async fn pim_policy(
        &self,
        scope: &str,
        role: &str,
    ) -> Result<Option<PimPolicyView>, AzureError> {
        let filter = format!("roleDefinitionId eq '{}'", role.replace('\'', "''"));
        let items: Vec<PolicyItem> = match self
            .list_all(
                "RoleManagementPolicyAssignments_ListForScope",
                &pim_path(scope, "roleManagementPolicyAssignments"),
                &[("$filter", &filter)],
                PIM_API_VERSION,
                &Caller::Operator,
            )
            .await
        {
            Ok(v) => v,
            // No permission to read role settings: Azure's own answer will name the rule.
            Err(AzureError::Forbidden { .. }) | Err(AzureError::NotFound { .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let role_id = crate::arm_id::ArmId::parse_role_definition(role).ok();
        let item = items.iter().find(|i| {
            let r = i
                .properties
                .role_definition_id
                .as_deref()
                .and_then(|r| crate::arm_id::ArmId::parse_role_definition(r).ok());
            match (&r, &role_id) {
                (Some(a), Some(b)) => a.role_guid() == b.role_guid(),
                _ => false,
            }
        });
        Ok(item.or(items.first()).map(PolicyItem::view))
    }

    /// GET a JIT policy; None on 404.
    pub async fn jit_policy(
        &self,
        sub: &str,
        rg: &str,
        location: &str,
        name: &str,
    ) -> Result<Option<JitPolicyView>, AzureError> {
        let p: Option<JitNetworkAccessPolicy> = self
            .get_json(
                "JitNetworkAccessPolicies_Get",
                &jit_policy_path(sub, rg, location, name),
                &[],
                JIT_API_VERSION,
                &Caller::Operator,
            )
            .await?;
        Ok(p.map(|p| p.view()))
    }

    /// POST initiate. Not replayed after an ambiguous failure: a replay would open a second
    /// request; the planner finds the first by its marker instead.
    pub async fn jit_initiate(
        &self,
        sub: &str,
        rg: &str,
        location: &str,
        name: &str,
        body: &JitInitiateRequest,
    ) -> Result<crate::lifecycle::JitRequestView, AzureError> {
        let json = serde_json::to_value(body).map_err(|e| AzureError::Invalid {
            status: 0,
            code: "Serialize".into(),
            message: e.to_string(),
        })?;
        let r = self
            .call(
                "JitNetworkAccessPolicies_Initiate",
                Method::POST,
                &format!("{}/initiate", jit_policy_path(sub, rg, location, name)),
                &[],
                JIT_API_VERSION,
                Some(&json),
                &Caller::Operator,
                Replay::Unsafe,
            )
            .await?;
        let req: JitNetworkAccessRequest = parse(&r.body)?;
        Ok(req.view())
    }

    /// Executes a planner write for a grant in namespace `ns`.
    pub async fn execute(&self, ns: &str, w: &AzureWrite) -> Result<WriteAnswer, AzureError> {
        match w {
            AzureWrite::Pim {
                scope,
                name,
                body,
                identity,
            } => self
                .pim_put(scope, name, &pim_request_body(body), &caller(ns, identity))
                .await
                .map(WriteAnswer::Pim),
            AzureWrite::PimCancel {
                scope,
                name,
                identity,
            } => self
                .pim_cancel(scope, name, &caller(ns, identity))
                .await
                .map(|_| WriteAnswer::Canceled),
            AzureWrite::JitInitiate {
                subscription_id,
                resource_group,
                location,
                policy_name,
                vms,
                justification,
            } => self
                .jit_initiate(
                    subscription_id,
                    resource_group,
                    location,
                    policy_name,
                    &jit_initiate_body(vms, justification),
                )
                .await
                .map(WriteAnswer::Jit),
        }
    }
}

/// The HTTP request a planner write becomes (`METHOD path?api-version=...`) and its JSON body,
/// without sending it: what a dry run records.
pub fn describe(w: &AzureWrite) -> (String, String) {
    match w {
        AzureWrite::Pim {
            scope, name, body, ..
        } => (
            format!(
                "PUT {}?api-version={PIM_API_VERSION}",
                pim_path(scope, &format!("roleAssignmentScheduleRequests/{name}"))
            ),
            serde_json::to_string(&pim_request_body(body)).unwrap_or_default(),
        ),
        AzureWrite::PimCancel { scope, name, .. } => (
            format!(
                "POST {}?api-version={PIM_API_VERSION}",
                pim_path(
                    scope,
                    &format!("roleAssignmentScheduleRequests/{name}/cancel")
                )
            ),
            String::new(),
        ),
        AzureWrite::JitInitiate {
            subscription_id,
            resource_group,
            location,
            policy_name,
            vms,
            justification,
        } => (
            format!(
                "POST {}/initiate?api-version={JIT_API_VERSION}",
                jit_policy_path(subscription_id, resource_group, location, policy_name)
            ),
            serde_json::to_string(&jit_initiate_body(vms, justification)).unwrap_or_default(),
        ),
    }
}
