//! JWKS at the edge: fetched over outbound HTTP (`allowed_outbound_hosts`
//! names each issuer's origin) and cached in key-value, before a policy of
//! crate `jwt-auth` runs. Policy calls are synchronous; the fetch is not, so
//! it happens between calls and the `io.jwks` answer comes from memory.

use crate::plan::Issuer;
use crate::services::{Services, now_ms};
use portcullis_sdk::JwksError;
use spin_sdk::http::{Method, Request, Response};

/// `"<issuer>#kid=<kid>"` asks for a key id (the node may refetch; the edge
/// answers from the set it has).
pub const KID_HINT: &str = "#kid=";

/// How long a fetched key set is used before it is fetched again.
const FRESH_MS: u64 = 300_000;
/// Largest key set accepted.
const MAX_JWKS: usize = 256 * 1024;

/// Make sure every issuer's key set is in `services.jwks` for this request.
pub async fn ensure(services: &Services) {
    for (issuer, how) in &services.plan.issuers {
        if services.jwks.borrow().contains_key(issuer) {
            continue;
        }
        let answer = match how {
            Issuer::Inline { jwks } => Ok(jwks.clone()),
            Issuer::Url { url } => cached_or_fetched(services, issuer, url).await,
        };
        services.jwks.borrow_mut().insert(issuer.clone(), answer);
    }
}

async fn cached_or_fetched(services: &Services, issuer: &str, url: &str) -> Result<String, JwksError> {
    let key = format!("jwks:{issuer}");
    let cached = services.kv.as_ref().and_then(|kv| kv.get(&key).ok().flatten()).and_then(|v| String::from_utf8(v).ok());
    // Stored as "<fetched at ms>\n<jwks>".
    let cached = cached.and_then(|v| v.split_once('\n').and_then(|(at, jwks)| Some((at.parse::<u64>().ok()?, jwks.to_string()))));
    if let Some((at, jwks)) = &cached
        && now_ms().saturating_sub(*at) < FRESH_MS
    {
        return Ok(jwks.clone());
    }
    match fetch(url).await {
        Ok(jwks) => {
            if let Some(kv) = &services.kv {
                let _ = kv.set(&key, format!("{}\n{jwks}", now_ms()).as_bytes());
            }
            Ok(jwks)
        }
        // A stale set beats none while the identity provider is down.
        Err(why) => match cached {
            Some((_, jwks)) => Ok(jwks),
            None => Err(JwksError::Unavailable(why)),
        },
    }
}

async fn fetch(url: &str) -> Result<String, String> {
    let request = Request::builder().method(Method::Get).uri(url).header("accept", "application/json").build();
    let response: Response = spin_sdk::http::send(request).await.map_err(|e| format!("fetching the key set: {e}"))?;
    if *response.status() != 200 {
        return Err(format!("the key set answered {}", response.status()));
    }
    if response.body().len() > MAX_JWKS {
        return Err(format!("the key set exceeds {MAX_JWKS} bytes"));
    }
    String::from_utf8(response.into_body()).map_err(|_| "the key set is not UTF-8".into())
}
