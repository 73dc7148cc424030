//! ARM resource ids and scopes: parsing, normalisation and containment (pure).
//!
//! ARM ids are case-insensitive and have two spellings of a subscription scope
//! (`/subscriptions/{id}` and `/providers/Microsoft.Subscription/subscriptions/{id}`).
//! Anything that could smuggle a different scope past a string comparison
//! (`..`, `.`, empty segments, trailing slashes, percent-encoding, backslashes, whitespace) is
//! refused rather than "cleaned up": a security boundary should not guess.

use std::fmt;

/// What an ARM id points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    /// `/`
    TenantRoot,
    /// `/providers/Microsoft.Management/managementGroups/{mg}`
    ManagementGroup,
    /// `/subscriptions/{sub}`
    Subscription,
    /// `/subscriptions/{sub}/resourceGroups/{rg}`
    ResourceGroup,
    /// Anything below: a resource or an extension resource.
    Resource,
}

/// A parsed, normalised ARM id.
#[derive(Clone, Debug)]
pub struct ArmId {
    segments: Vec<String>,
    lower: Vec<String>,
}

impl PartialEq for ArmId {
    fn eq(&self, other: &Self) -> bool {
        self.lower == other.lower
    }
}
impl Eq for ArmId {}

impl std::hash::Hash for ArmId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.lower.hash(state)
    }
}

impl fmt::Display for ArmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

fn canonical_keyword(seg: &str) -> Option<&'static str> {
    const WORDS: &[&str] = &[
        "subscriptions",
        "resourceGroups",
        "providers",
        "managementGroups",
        "Microsoft.Management",
        "Microsoft.Authorization",
        "Microsoft.Compute",
        "Microsoft.Security",
        "virtualMachines",
        "roleDefinitions",
    ];
    WORDS.iter().copied().find(|w| w.eq_ignore_ascii_case(seg))
}

impl ArmId {
    /// Parses and normalises an ARM id or scope. Errors are one sentence for a condition.
    pub fn parse(s: &str) -> Result<ArmId, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.len() > 1024 {
            return Err("is longer than 1024 characters".into());
        }
        if !s.starts_with('/') {
            return Err(format!("{s:?} must start with '/'"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '\\' | '%' | '?' | '#'))
        {
            return Err(format!(
                "{s:?} contains the character {c:?}, which ARM ids never hold"
            ));
        }
        if s == "/" {
            return Ok(ArmId {
                segments: vec![],
                lower: vec![],
            });
        }
        if s.ends_with('/') {
            return Err(format!("{s:?} ends with '/'"));
        }
        let raw: Vec<&str> = s[1..].split('/').collect();
        for seg in &raw {
            if seg.is_empty() {
                return Err(format!("{s:?} has an empty path segment ('//')"));
            }
            if *seg == "." || *seg == ".." {
                return Err(format!("{s:?} has a relative path segment ({seg:?})"));
            }
        }
        let mut segments: Vec<String> = raw
            .iter()
            .map(|seg| canonical_keyword(seg).map_or_else(|| (*seg).to_string(), str::to_string))
            .collect();
        // Alias: /providers/Microsoft.Subscription/subscriptions/{id}/... -> /subscriptions/{id}/...
        if segments.len() >= 4
            && segments[0] == "providers"
            && segments[1].eq_ignore_ascii_case("Microsoft.Subscription")
            && segments[2] == "subscriptions"
        {
            segments.drain(0..2);
        }
        let id = ArmId {
            lower: segments.iter().map(|s| s.to_ascii_lowercase()).collect(),
            segments,
        };
        id.check_structure().map_err(|e| format!("{s:?} {e}"))?;
        Ok(id)
    }

    fn check_structure(&self) -> Result<(), String> {
        let l = &self.lower;
        match l.first().map(String::as_str) {
            Some("subscriptions") => {
                let sub = l.get(1).ok_or("names no subscription id")?;
                if !is_guid(sub) {
                    return Err("has a subscription id that is not a GUID".into());
                }
                let mut i = 2;
                if l.get(2).map(String::as_str) == Some("resourcegroups") {
                    let rg = l.get(3).ok_or("names no resource group")?;
                    if !is_rg_name(rg) {
                        return Err("has an invalid resource group name".into());
                    }
                    i = 4;
                }
                self.check_provider_tail(i)
            }
            Some("providers") => self.check_provider_tail(0),
            _ => Err("must start with /subscriptions/ or /providers/".into()),
        }
    }

    /// From index `i`: nothing, or `providers/{namespace}/{type}/{name}[/{type}/{name}]...`
    /// (extension resources may repeat `providers/...`).
    fn check_provider_tail(&self, mut i: usize) -> Result<(), String> {
        let l = &self.lower;
        while i < l.len() {
            if l[i] != "providers" {
                return Err(format!("has unexpected segment {:?}", self.segments[i]));
            }
            if i + 1 >= l.len() {
                return Err("ends after 'providers'".into());
            }
            i += 2; // namespace
            let mut pairs = 0;
            while i < l.len() && l[i] != "providers" {
                if i + 1 >= l.len() {
                    return Err(format!(
                        "has a resource type {:?} without a name",
                        self.segments[i]
                    ));
                }
                i += 2;
                pairs += 1;
            }
            if pairs == 0 {
                return Err("names a provider namespace without a resource".into());
            }
        }
        Ok(())
    }

    /// What kind of scope this is.
    pub fn kind(&self) -> ScopeKind {
        let l = &self.lower;
        match l.len() {
            0 => ScopeKind::TenantRoot,
            2 if l[0] == "subscriptions" => ScopeKind::Subscription,
            4 if l[0] == "subscriptions" && l[2] == "resourcegroups" => ScopeKind::ResourceGroup,
            4 if l[0] == "providers"
                && l[1] == "microsoft.management"
                && l[2] == "managementgroups" =>
            {
                ScopeKind::ManagementGroup
            }
            _ => ScopeKind::Resource,
        }
    }

    /// The subscription id (lower case), when the id is inside a subscription.
    pub fn subscription_id(&self) -> Option<&str> {
        (self.lower.first().map(String::as_str) == Some("subscriptions"))
            .then(|| self.lower.get(1).map(String::as_str))
            .flatten()
    }

    /// The resource group name (lower case), when inside one.
    pub fn resource_group(&self) -> Option<&str> {
        (self.subscription_id().is_some()
            && self.lower.get(2).map(String::as_str) == Some("resourcegroups"))
        .then(|| self.lower.get(3).map(String::as_str))
        .flatten()
    }

    /// True when `other` equals this scope or lies beneath it (segment-wise; `rg1` does not
    /// contain `rg10`).
    pub fn contains(&self, other: &ArmId) -> bool {
        other.lower.len() >= self.lower.len() && other.lower[..self.lower.len()] == self.lower[..]
    }

    /// Lower-case segments, for pattern matching.
    pub fn lower_segments(&self) -> &[String] {
        &self.lower
    }

    /// The last segment in its original case (a resource name).
    pub fn name(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    /// Parses a VM id: `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}`.
    pub fn parse_vm(s: &str) -> Result<ArmId, String> {
        let id = ArmId::parse(s)?;
        let l = &id.lower;
        if l.len() == 8
            && l[0] == "subscriptions"
            && l[2] == "resourcegroups"
            && l[4] == "providers"
            && l[5] == "microsoft.compute"
            && l[6] == "virtualmachines"
        {
            Ok(id)
        } else {
            Err(format!(
                "{s:?} is not a VM id (/subscriptions/{{sub}}/resourceGroups/{{rg}}/providers/Microsoft.Compute/virtualMachines/{{name}})"
            ))
        }
    }

    /// Parses a role definition id: `[{scope}]/providers/Microsoft.Authorization/roleDefinitions/{guid}`.
    pub fn parse_role_definition(s: &str) -> Result<ArmId, String> {
        let id = ArmId::parse(s)?;
        let l = &id.lower;
        let n = l.len();
        if n >= 4
            && l[n - 4] == "providers"
            && l[n - 3] == "microsoft.authorization"
            && l[n - 2] == "roledefinitions"
            && is_guid(&l[n - 1])
        {
            Ok(id)
        } else {
            Err(format!(
                "{s:?} is not a role definition id (/subscriptions/{{sub}}/providers/Microsoft.Authorization/roleDefinitions/{{guid}})"
            ))
        }
    }

    /// The trailing GUID of a role definition id.
    pub fn role_guid(&self) -> Option<&str> {
        self.lower.last().map(String::as_str).filter(|g| is_guid(g))
    }
}

/// Matches a normalised id against a pattern whose segments may be `*` (any one segment).
/// Both sides compare case-insensitively; the pattern is itself parsed with the same rules
/// except that `*` is allowed as a whole segment.
pub fn matches_pattern(pattern: &str, id: &ArmId) -> bool {
    let Some(rest) = pattern.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() || rest.ends_with('/') {
        return false;
    }
    let pat: Vec<String> = rest.split('/').map(|s| s.to_ascii_lowercase()).collect();
    // Normalise the subscription alias in patterns too.
    let pat: Vec<String> = if pat.len() >= 4
        && pat[0] == "providers"
        && pat[1] == "microsoft.subscription"
        && pat[2] == "subscriptions"
    {
        pat[2..].to_vec()
    } else {
        pat
    };
    if pat.iter().any(|s| s.is_empty() || s == "." || s == "..") {
        return false;
    }
    let l = id.lower_segments();
    pat.len() == l.len() && pat.iter().zip(l).all(|(p, s)| p == "*" || p == s)
}

/// True for a canonical GUID `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (any case).
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Resource group names: 1..90 of `[-\w._()]`, not ending in `.`.
pub fn is_rg_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 90
        && !s.ends_with('.')
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

    #[test]
    fn normalises_alias_and_case() {
        let a = ArmId::parse(&format!(
            "/providers/Microsoft.Subscription/subscriptions/{SUB}/resourceGroups/RG1"
        ))
        .unwrap();
        let b = ArmId::parse(&format!(
            "/SUBSCRIPTIONS/{}/resourcegroups/rg1",
            SUB.to_uppercase()
        ))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.kind(), ScopeKind::ResourceGroup);
        assert_eq!(
            a.to_string(),
            format!("/subscriptions/{SUB}/resourceGroups/RG1")
        );
    }

    #[test]
    fn refuses_tricks() {
        for s in [
            format!("/subscriptions/{SUB}/resourceGroups/rg1/../rg2"),
            format!("/subscriptions/{SUB}/resourceGroups/rg1/"),
            format!("/subscriptions/{SUB}//resourceGroups/rg1"),
            format!("/subscriptions/{SUB}/resourceGroups/rg1/./x"),
            format!("/subscriptions/{SUB}/resourceGroups/rg%31"),
            format!("/subscriptions/{SUB}/resourceGroups/rg 1"),
            format!("subscriptions/{SUB}"),
            "/subscriptions/not-a-guid".to_string(),
            format!("/subscriptions/{SUB}/resourceGroups"),
            format!("/subscriptions/{SUB}/foo/bar"),
        ] {
            assert!(ArmId::parse(&s).is_err(), "{s} should be refused");
        }
    }

    #[test]
    fn containment_is_segment_wise() {
        let rg1 = ArmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/rg1")).unwrap();
        let rg10 = ArmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/rg10")).unwrap();
        let vm = ArmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/RG1/providers/Microsoft.Compute/virtualMachines/vm1")).unwrap();
        let sub = ArmId::parse(&format!("/subscriptions/{SUB}")).unwrap();
        assert!(rg1.contains(&rg1));
        assert!(rg1.contains(&vm));
        assert!(!rg1.contains(&rg10));
        assert!(!rg1.contains(&sub));
        assert!(sub.contains(&rg10));
    }

    #[test]
    fn vm_and_role_ids() {
        assert!(ArmId::parse_vm(&format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1")).is_ok());
        assert!(ArmId::parse_vm(&format!("/subscriptions/{SUB}/resourceGroups/rg1")).is_err());
        let r = ArmId::parse_role_definition(&format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7")).unwrap();
        assert_eq!(r.role_guid(), Some("acdd72a7-3385-48ef-bd42-f606fba81ae7"));
        assert!(
            ArmId::parse_role_definition(&format!(
                "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/xyz"
            ))
            .is_err()
        );
    }

    #[test]
    fn patterns() {
        let vm = ArmId::parse_vm(&format!("/subscriptions/{SUB}/resourceGroups/RG1/providers/Microsoft.Compute/virtualMachines/vm1")).unwrap();
        assert!(matches_pattern(
            &format!(
                "/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/*"
            ),
            &vm
        ));
        assert!(!matches_pattern(
            &format!(
                "/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm2"
            ),
            &vm
        ));
        assert!(!matches_pattern(
            &format!("/subscriptions/{SUB}/resourceGroups/*"),
            &vm
        ));
        assert!(!matches_pattern(
            &format!(
                "/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/*/"
            ),
            &vm
        ));
    }
}
