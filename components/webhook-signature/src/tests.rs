use super::*;
use alloc::string::ToString;
use alloc::vec;
use portcullis_sdk::Header;

const KEY_DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // sha256("test")

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, String> {
    let p: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from(portcullis_sdk::settings::from_pairs(&p)?)
}

fn req(headers: &[(&str, &str)], facts: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        id: "t".into(),
        method: "POST".into(),
        scheme: "https".into(),
        authority: "api.procare.health".into(),
        path: "/webhooks/whatsapp".into(),
        query: None,
        headers: headers.iter().map(|(k, v)| Header::new(*k, *v)).collect(),
        client_ip: "192.0.2.1".into(),
        listener: "public".into(),
        route: None,
        facts: facts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

const DIGEST: &str = "0af4bcd5dc2b3ae6c7a06d8dd9a1a59d2a4f1d9e0b5c4f1c8e8a7c1b2d3e4f50";

#[test]
fn hmac_scheme_accepts_the_host_digest_and_refuses_the_rest() {
    let c = cfg(&[("scheme", "hmac-sha256")]).unwrap();
    let sig = alloc::format!("sha256={DIGEST}");
    assert_eq!(decide(&c, &req(&[("x-hub-signature-256", &sig)], &[(HMAC_FACT, DIGEST)])), Ok(()));
    assert_eq!(decide(&c, &req(&[], &[(HMAC_FACT, DIGEST)])), Err(Refusal::Missing));
    let wrong = alloc::format!("sha256={}", &DIGEST.replace('0', "1"));
    assert_eq!(decide(&c, &req(&[("x-hub-signature-256", &wrong)], &[(HMAC_FACT, DIGEST)])), Err(Refusal::Mismatch));
    assert_eq!(decide(&c, &req(&[("x-hub-signature-256", DIGEST)], &[(HMAC_FACT, DIGEST)])), Err(Refusal::Malformed), "no prefix");
    assert_eq!(decide(&c, &req(&[("x-hub-signature-256", "sha256=zz")], &[(HMAC_FACT, DIGEST)])), Err(Refusal::Malformed));
    assert_eq!(decide(&c, &req(&[("x-hub-signature-256", "sha256=0af4")], &[(HMAC_FACT, DIGEST)])), Err(Refusal::Mismatch), "a prefix of the digest");
    assert_eq!(decide(&c, &req(&[("x-hub-signature-256", &sig)], &[])), Err(Refusal::Misconfigured), "no digest from the host");
}

#[test]
fn hmac_scheme_reads_base64_without_prefix() {
    let c = cfg(&[("scheme", "hmac-sha256"), ("header", "x-signature"), ("prefix", ""), ("encoding", "base64")]).unwrap();
    let raw = hex::decode(DIGEST).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    assert_eq!(decide(&c, &req(&[("x-signature", &b64)], &[(HMAC_FACT, DIGEST)])), Ok(()));
}

#[test]
fn api_key_scheme_compares_digests() {
    let c = cfg(&[("scheme", "api-key"), ("api-key-sha256", &alloc::format!("{},{KEY_DIGEST}", "00".repeat(32)))]).unwrap();
    assert_eq!(c.header, "apikey");
    assert_eq!(decide(&c, &req(&[("apikey", "test")], &[])), Ok(()));
    assert_eq!(decide(&c, &req(&[("apikey", "Test")], &[])), Err(Refusal::Mismatch));
    assert_eq!(decide(&c, &req(&[], &[])), Err(Refusal::Missing));
}

#[test]
fn settings_errors_name_the_key() {
    let err = |p: &[(&str, &str)]| cfg(p).err().unwrap();
    assert!(err(&[]).contains("missing field `scheme`"));
    assert!(err(&[("scheme", "md5")]).starts_with("setting \"scheme\": unknown variant `md5`"));
    assert_eq!(err(&[("scheme", "api-key")]), "setting \"api-key-sha256\": the api-key scheme needs at least one key digest");
    assert_eq!(err(&[("scheme", "api-key"), ("api-key-sha256", "abc")]), "setting \"api-key-sha256.0\": expected a SHA-256 digest: 64 hex digits");
    assert!(err(&[("scheme", "hmac-sha256"), ("api-key-sha256", KEY_DIGEST)]).starts_with("setting \"api-key-sha256\": only the api-key scheme"));
    assert!(err(&[("scheme", "hmac-sha256"), ("header", "X-Sig")]).starts_with("setting \"header\""));
    assert!(err(&[("scheme", "hmac-sha256"), ("secret", "x")]).starts_with("setting \"secret\": unknown field"));
    assert_eq!(err(&[("scheme", "hmac-sha256"), ("strip-header", "yes")]), "setting \"strip-header\": expected true or false, got \"yes\"");
    let _ = vec![0u8];
}
