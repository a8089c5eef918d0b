//! The policy crates compiled into the edge, by crate name. The same
//! sources as the node's components, built with the SDK's `embedded`
//! feature (README, "At the edge on Spin").

use portcullis_sdk::embedded::PolicyVTable;

/// The crates an edge plan may name.
pub const CRATES: &[&str] = &["router", "security-headers", "rate-limit", "jwt-auth", "residency", "webhook-signature"];

/// The compiled-in policy of crate `name`.
pub fn vtable(name: &str) -> Option<PolicyVTable> {
    Some(match name {
        "router" => router::embedded_policy(),
        "security-headers" => security_headers::embedded_policy(),
        "rate-limit" => rate_limit::embedded_policy(),
        "jwt-auth" => jwt_auth::embedded_policy(),
        "residency" => residency::embedded_policy(),
        "webhook-signature" => webhook_signature::embedded_policy(),
        _ => return None,
    })
}
