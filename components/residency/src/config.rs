//! The policy's settings, parsed from the flattened pairs the host gives
//! (`portcullis_sdk::settings("")`), as a pure function so it is tested natively.
//!
//! Two kinds of setting:
//!
//! - **derived** by the host from `[residency] regions = "regions.toml"`
//!   (an operator cannot write them; `portcullis check` refuses it):
//!   `namespace` (the policy's configured name), `jurisdictions`, `regions`
//!   (`region=jurisdiction` items), `pools` (`pool=region` items) and
//!   `rules` (one per line: name, subject, class, allow, consent, separated
//!   by tabs);
//! - **the operator's**: `subject-fact`, `consent-fact`, `forged-headers`.
//!
//! Every name the host renders is a plain name (letters, digits, `-`, `_`),
//! so list items never carry escapes and everything here borrows from the
//! settings.

use alloc::string::String;
use alloc::vec::Vec;
use portcullis_sdk::{json, list};

/// "Any" in a rule's subject, class or allow.
pub const ANY: &str = "*";

/// The fact that carries the subject's residency by default (jwt-auth's
/// `region-claim`): written only by a policy that verified it.
pub const DEFAULT_SUBJECT_FACT: &str = "jwt.region";
/// The fact that lists the subject's consents by default (jwt-auth's
/// `consent-claim`).
pub const DEFAULT_CONSENT_FACT: &str = "jwt.consent";
/// Request headers a client might use to claim a residency; stripped and
/// audited, never believed.
pub const DEFAULT_FORGED_HEADERS: [&str; 6] = [
    "x-data-region",
    "x-data-residency",
    "x-residency",
    "x-region",
    "x-subject-region",
    "x-jurisdiction",
];

/// Settings rendered by the host from the regions file.
pub const DERIVED: [&str; 5] = ["namespace", "jurisdictions", "regions", "pools", "rules"];

/// One rule: data of `class` about a subject resident in `subject` may go
/// to the jurisdictions in `allow`, if the subject gave `consent` (when set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<'a> {
    /// Named in 451 answers and audit records.
    pub name: &'a str,
    /// A jurisdiction, or [`ANY`] (any subject, also one of unknown residency).
    pub subject: &'a str,
    /// A data class, or [`ANY`].
    pub class: &'a str,
    /// Jurisdictions the data may go to; `[ANY]`: anywhere.
    pub allow: Vec<&'a str>,
    /// A consent the subject must have given.
    pub consent: Option<&'a str>,
}

impl Rule<'_> {
    /// Whether the rule lets data go to a pool in jurisdiction `j` (`None`:
    /// a pool whose region is not known, which only "anywhere" admits).
    pub fn allows(&self, j: Option<&str>) -> bool {
        self.allow.first() == Some(&ANY) || j.is_some_and(|j| self.allow.contains(&j))
    }
}

/// The parsed settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config<'a> {
    /// The policy's fact namespace (its configured name).
    pub namespace: &'a str,
    /// Jurisdiction names.
    pub jurisdictions: Vec<&'a str>,
    /// Region → jurisdiction.
    pub regions: Vec<(&'a str, &'a str)>,
    /// Pool → region.
    pub pools: Vec<(&'a str, &'a str)>,
    /// Rules, in order of preference.
    pub rules: Vec<Rule<'a>>,
    /// Fact with the subject's residency.
    pub subject_fact: &'a str,
    /// Fact with the subject's consents (a list).
    pub consent_fact: &'a str,
    /// Headers stripped and audited, lower-case.
    pub forged_headers: Vec<String>,
}

impl<'a> Config<'a> {
    /// The jurisdiction of a pool, through its region.
    pub fn pool_jurisdiction(&self, pool: &str) -> Option<&'a str> {
        let region = self.pools.iter().find(|(p, _)| *p == pool)?.1;
        self.region_jurisdiction(region)
    }

    /// The jurisdiction of a region.
    pub fn region_jurisdiction(&self, region: &str) -> Option<&'a str> {
        self.regions
            .iter()
            .find(|(r, _)| *r == region)
            .map(|(_, j)| *j)
    }
}

/// `setting "<key>": <reason>` (the SDK's one format for settings errors).
pub use portcullis_sdk::setting_error as error;

use portcullis_sdk::setting_error_got as error_got;

/// The items of a host-rendered list, each borrowed (they carry no escapes).
fn names<'a>(key: &str, text: &'a str) -> Result<Vec<&'a str>, String> {
    let mut out = Vec::new();
    for item in list::items(text) {
        match item {
            alloc::borrow::Cow::Borrowed(s) if !s.is_empty() => out.push(s),
            other => return Err(error_got(key, "expected plain names", &other)),
        }
    }
    Ok(out)
}

fn pairs<'a>(key: &str, text: &'a str) -> Result<Vec<(&'a str, &'a str)>, String> {
    names(key, text)?
        .into_iter()
        .map(|item| {
            item.split_once('=')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .ok_or_else(|| error_got(key, "expected name=name items", item))
        })
        .collect()
}

fn rules<'a>(text: &'a str) -> Result<Vec<Rule<'a>>, String> {
    let mut out = Vec::new();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let mut f = line.split('\t');
        let (Some(name), Some(subject), Some(class), Some(allow), Some(consent), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(error_got(
                "rules",
                "expected 5 tab-separated fields per line (name, subject, class, allow, consent)",
                line,
            ));
        };
        let allow = names("rules", allow)?;
        if name.is_empty() || subject.is_empty() || class.is_empty() || allow.is_empty() {
            return Err(error_got(
                "rules",
                "a rule needs a name, a subject, a class and at least one allowed jurisdiction",
                line,
            ));
        }
        out.push(Rule {
            name,
            subject,
            class,
            allow,
            consent: (!consent.is_empty()).then_some(consent),
        });
    }
    Ok(out)
}

fn fact_name<'a>(key: &str, v: &'a str) -> Result<&'a str, String> {
    let ok = v
        .split_once('.')
        .is_some_and(|(ns, k)| !ns.is_empty() && !k.is_empty())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(v)
    } else {
        Err(error_got(key, "expected a fact name such as jwt.region", v))
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parse `pairs` (`portcullis_sdk::settings("")`). Every problem names the setting.
pub fn parse(pairs_in: &[(String, String)]) -> Result<Config<'_>, String> {
    let mut c = Config {
        namespace: "",
        jurisdictions: Vec::new(),
        regions: Vec::new(),
        pools: Vec::new(),
        rules: Vec::new(),
        subject_fact: DEFAULT_SUBJECT_FACT,
        consent_fact: DEFAULT_CONSENT_FACT,
        forged_headers: DEFAULT_FORGED_HEADERS
            .iter()
            .map(|h| String::from(*h))
            .collect(),
    };
    let mut derived = 0usize;
    for (key, value) in pairs_in {
        let (k, v) = (key.as_str(), value.as_str());
        match k {
            "namespace" => c.namespace = v,
            "jurisdictions" => c.jurisdictions = names(k, v)?,
            "regions" => c.regions = pairs(k, v)?,
            "pools" => c.pools = pairs(k, v)?,
            "rules" => c.rules = rules(v)?,
            "subject-fact" => c.subject_fact = fact_name(k, v)?,
            "consent-fact" => c.consent_fact = fact_name(k, v)?,
            "forged-headers" => {
                c.forged_headers.clear();
                for h in list::items(v) {
                    if !is_token(&h) {
                        return Err(error_got(k, "expected header names", &h));
                    }
                    c.forged_headers.push(h.to_ascii_lowercase());
                }
            }
            _ => {
                return Err(error(
                    k,
                    "unknown setting (known: subject-fact, consent-fact, forged-headers)",
                ));
            }
        }
        if DERIVED.contains(&k) {
            derived += 1;
        }
    }
    if derived < DERIVED.len() {
        let missing = DERIVED
            .iter()
            .find(|d| !pairs_in.iter().any(|(k, _)| k == *d))
            .copied()
            .unwrap_or("rules");
        return Err(error(
            missing,
            "missing: the host derives it from the regions file; configure [residency] regions = \"regions.toml\" in the gateway config",
        ));
    }
    if c.namespace.is_empty() {
        return Err(error("namespace", "empty"));
    }
    Ok(c)
}

/// Cross-references the host already checked, checked again at load
/// (`check-config`) so a policy tested with hand-written settings is held
/// to the same standard: every jurisdiction a region or rule names exists.
pub fn check(c: &Config<'_>) -> Result<(), String> {
    let known = |j: &str| c.jurisdictions.contains(&j);
    for (region, j) in &c.regions {
        if !known(j) {
            let mut e = String::from("region ");
            json::push_string(&mut e, region);
            e.push_str(" is in unknown jurisdiction");
            return Err(error_got("regions", &e, j));
        }
    }
    for (pool, region) in &c.pools {
        if c.region_jurisdiction(region).is_none() {
            let mut e = String::from("pool ");
            json::push_string(&mut e, pool);
            e.push_str(" is in unknown region");
            return Err(error_got("pools", &e, region));
        }
    }
    for r in &c.rules {
        let subject_ok = r.subject == ANY || known(r.subject);
        let allow_ok = r.allow.iter().all(|a| known(a)) || r.allow.as_slice() == [ANY];
        if !subject_ok || !allow_ok {
            return Err(error_got(
                "rules",
                "a rule names an unknown jurisdiction",
                r.name,
            ));
        }
    }
    Ok(())
}
