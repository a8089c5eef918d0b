//! Data residency, the host's half: the regions file (`[residency]
//! regions`), its checks, and the settings the residency policy is given.
//!
//! The decision itself is a policy (`components/residency`): it reads the
//! data subject's residency from a verified fact and narrows the route's
//! candidate pools to the permitted regions. What the host owns is what a
//! policy cannot know or must not be trusted to check alone:
//!
//! - which region each pool is in (pools are host configuration), and that
//!   every pool has one;
//! - that every region, rule and route names jurisdictions and data classes
//!   that exist — a typo in a rule must stop the gateway from loading, not
//!   quietly permit or forbid something at request time;
//! - that every route runs the residency policy, and (at request time, in
//!   `proxy::route`) that it actually narrowed the pools before anything is
//!   forwarded.
//!
//! The policy learns the pool → region → jurisdiction map and the rules
//! through settings the host renders from this file, the way it renders the
//! route table for the router: no new call in the contract, the map is
//! validated once at load, and it changes atomically with a reload.

use crate::config::{self, Config, ConfigError, Source, parse_as, valid_name};
use crate::runtime::settings::encode_list;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

/// The policy name `[residency] policy` defaults to.
pub const DEFAULT_POLICY: &str = "residency";

/// "Any": a rule's `subject`, `class` or `allow` that matches everything.
pub const ANY: &str = "*";

/// Settings of the residency policy that the host renders from the regions
/// file; an operator may not set them.
pub const DERIVED_SETTINGS: [&str; 5] = ["namespace", "jurisdictions", "regions", "pools", "rules"];

/// `[residency]` in the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// The regions file: jurisdictions, regions, data classes and rules
    /// (relative to the configuration file).
    pub regions: Spanned<String>,
    /// The policy that enforces them and gets the derived settings.
    #[serde(default = "default_policy")]
    pub policy: Spanned<String>,
}

fn default_policy() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_POLICY.to_string())
}

/// The regions file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    jurisdictions: Vec<Spanned<String>>,
    #[serde(default)]
    classes: Vec<Spanned<String>>,
    #[serde(default)]
    regions: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    name: Spanned<String>,
    subject: Spanned<String>,
    class: Spanned<String>,
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    consent: Option<Spanned<String>>,
}

/// The regions file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regions {
    /// Legal areas (`EU`, `US`, `IN`), in file order.
    pub jurisdictions: Vec<String>,
    /// Data classes routes may declare (`health`, `public`).
    pub classes: Vec<String>,
    /// Region → its jurisdiction.
    pub regions: BTreeMap<String, String>,
    /// Rules in file order (the order is the policy's preference).
    pub rules: Vec<Rule>,
}

/// One rule: data of `class` about a subject resident in `subject` may go to
/// the jurisdictions in `allow` (when the subject gave `consent`, if named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Named in 451 answers and audit records.
    pub name: String,
    /// A jurisdiction or [`ANY`] (any subject, also one of unknown residency).
    pub subject: String,
    /// A data class or [`ANY`].
    pub class: String,
    /// Jurisdictions the data may go to, or `[ANY]`.
    pub allow: Vec<String>,
    /// A consent the subject must have given (an item of the consent fact).
    pub consent: Option<String>,
}

/// Residency as configured: the checked regions file and its policy.
#[derive(Debug, Clone)]
pub struct Residency {
    /// The regions file (watched for reloads).
    pub file: PathBuf,
    /// Its text (part of the chain version: it decides requests).
    pub text: String,
    /// The enforcing policy's name.
    pub policy: String,
    /// The checked file.
    pub regions: Regions,
}

/// Read and check the regions file named by `[residency]`, and check the
/// gateway configuration against it. `Ok(None)` when residency is off.
pub fn load(source: &Source, config: &Config) -> Result<Option<Residency>, Vec<ConfigError>> {
    let Some(rc) = &config.residency else { return Ok(None) };
    let mut errors = Vec::new();
    let policy = rc.policy.get_ref();
    if !config.policies.contains_key(policy) {
        let reason = format!("no policy named {policy:?} (add [policies.{policy}] with the residency component)");
        errors.push(if rc.policy.span().is_empty() { source.error("residency.policy", reason) } else { source.error_at(&rc.policy, "residency.policy", reason) });
    }
    let file = source.resolve(rc.regions.get_ref());
    let regions = match std::fs::read_to_string(&file) {
        Err(e) => {
            errors.push(source.error_at(&rc.regions, "residency.regions", format!("cannot read {}: {e}", file.display())));
            None
        }
        Ok(text) => {
            let regions_source = Source { file: file.clone(), base_dir: source.base_dir.clone(), text };
            match parse_as::<RegionsFile>(&regions_source).map_err(|e| e.0).and_then(|f| check_regions(&regions_source, &f)) {
                Ok(r) => Some((r, regions_source.text)),
                Err(mut e) => {
                    errors.append(&mut e);
                    None
                }
            }
        }
    };
    check_gateway(source, config, policy, regions.as_ref().map(|(r, _)| r), &file, &mut errors);
    match regions {
        Some((regions, text)) if errors.is_empty() => Ok(Some(Residency { file, text, policy: policy.clone(), regions })),
        _ => Err(errors),
    }
}

fn names<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.into_iter().map(String::as_str).collect();
    if v.is_empty() { "none defined".into() } else { v.join(", ") }
}

/// Check the regions file on its own: every name well formed and unique,
/// every jurisdiction and class a rule or region names declared.
fn check_regions(src: &Source, f: &RegionsFile) -> Result<Regions, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let declared = |list: &[Spanned<String>], key: &str, what: &str, errors: &mut Vec<ConfigError>| -> Vec<String> {
        let mut seen = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let name = item.get_ref();
            if !valid_name(name) {
                errors.push(src.error_at(item, format!("{key}[{i}]"), format!("{name:?} is not a valid {what} name (letters, digits, '-', '_')")));
            } else if seen.contains(name) {
                errors.push(src.error_at(item, format!("{key}[{i}]"), format!("duplicate {what} {name:?}")));
            } else {
                seen.push(name.clone());
            }
        }
        if list.is_empty() {
            errors.push(src.error(key, format!("at least one {what} is required")));
        }
        seen
    };
    let jurisdictions = declared(&f.jurisdictions, "jurisdictions", "jurisdiction", &mut errors);
    let classes = declared(&f.classes, "classes", "data class", &mut errors);
    let unknown_jurisdiction = |j: &str| format!("unknown jurisdiction {j:?} (jurisdictions: {})", names(&jurisdictions));

    let mut regions = BTreeMap::new();
    for (region, j) in &f.regions {
        let key = format!("regions.{region}");
        if !valid_name(region) {
            errors.push(src.error_at(j, &key, format!("{region:?} is not a valid region name (letters, digits, '-', '_')")));
        }
        if jurisdictions.contains(j.get_ref()) {
            regions.insert(region.clone(), j.get_ref().clone());
        } else {
            errors.push(src.error_at(j, &key, unknown_jurisdiction(j.get_ref())));
        }
    }

    let mut rules: Vec<Rule> = Vec::new();
    for (i, r) in f.rules.iter().enumerate() {
        let key = |field: &str| format!("rules[{i}].{field}");
        let name = r.name.get_ref();
        if !valid_name(name) {
            errors.push(src.error_at(&r.name, key("name"), format!("{name:?} is not a valid rule name (letters, digits, '-', '_')")));
        } else if rules.iter().any(|x| x.name == *name) {
            errors.push(src.error_at(&r.name, key("name"), format!("duplicate rule name {name:?}")));
        }
        let subject = r.subject.get_ref();
        if subject != ANY && !jurisdictions.contains(subject) {
            errors.push(src.error_at(&r.subject, key("subject"), format!("{} or \"*\"", unknown_jurisdiction(subject))));
        }
        let class = r.class.get_ref();
        if class != ANY && !classes.contains(class) {
            errors.push(src.error_at(&r.class, key("class"), format!("unknown data class {class:?} (classes: {}) or \"*\"", names(&classes))));
        }
        if r.allow.is_empty() {
            errors.push(src.error_at(&r.name, key("allow"), "a rule allows at least one jurisdiction (or \"*\"); leave a case without a rule to forbid it"));
        }
        for (j, a) in r.allow.iter().enumerate() {
            let a_ref = a.get_ref();
            if a_ref == ANY {
                if r.allow.len() > 1 {
                    errors.push(src.error_at(a, format!("rules[{i}].allow[{j}]"), "\"*\" (anywhere) must be the only entry when present"));
                }
            } else if !jurisdictions.contains(a_ref) {
                errors.push(src.error_at(a, format!("rules[{i}].allow[{j}]"), unknown_jurisdiction(a_ref)));
            }
        }
        if let Some(c) = &r.consent
            && !valid_consent(c.get_ref())
        {
            errors.push(src.error_at(c, key("consent"), format!("expected a consent name (letters, digits and -_.:), got {:?}", c.get_ref())));
        }
        rules.push(Rule {
            name: name.clone(),
            subject: subject.clone(),
            class: class.clone(),
            allow: r.allow.iter().map(|a| a.get_ref().clone()).collect(),
            consent: r.consent.as_ref().map(|c| c.get_ref().clone()),
        });
    }
    if errors.is_empty() { Ok(Regions { jurisdictions, classes, regions, rules }) } else { Err(errors) }
}

fn valid_consent(c: &str) -> bool {
    !c.is_empty() && c.len() <= 128 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Check the gateway configuration against the regions: every pool in a
/// known region, every route running the policy with a known data class,
/// and no derived setting written by hand.
fn check_gateway(source: &Source, config: &Config, policy: &str, regions: Option<&Regions>, file: &std::path::Path, errors: &mut Vec<ConfigError>) {
    let file_name = file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());
    for (i, pool) in config.pools.iter().enumerate() {
        let key = format!("pools[{i}].region");
        match (&pool.region, regions) {
            (None, _) => {
                let known = regions.map(|r| format!(" (regions in {file_name}: {})", names(r.regions.keys()))).unwrap_or_default();
                errors.push(source.error_at(&pool.name, key, format!("pool {:?} has no region; with [residency] every pool needs one{known}", pool.name.get_ref())));
            }
            (Some(r), Some(regions)) if !regions.regions.contains_key(r.get_ref()) => {
                errors.push(source.error_at(r, key, format!("unknown region {:?} (regions in {file_name}: {})", r.get_ref(), names(regions.regions.keys()))));
            }
            _ => {}
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        if !r.chain.iter().any(|c| c.get_ref() == policy) {
            errors.push(source.error_at(
                &r.name,
                format!("routes[{i}].chain"),
                format!("route {:?} does not run the residency policy {policy:?}; with [residency] every route must (for data that may go anywhere, declare a class that a rule allows anywhere)", r.name.get_ref()),
            ));
        }
        match r.facts.get("residency-class") {
            None => errors.push(source.error_at(&r.name, format!("routes[{i}].facts.residency-class"), "missing: with [residency] every route declares the data class it carries")),
            Some(toml::Value::String(class)) => {
                if let Some(regions) = regions
                    && !regions.classes.contains(class)
                {
                    errors.push(source.error_at(&r.name, format!("routes[{i}].facts.residency-class"), format!("unknown data class {class:?} (classes in {file_name}: {})", names(&regions.classes))));
                }
            }
            Some(_) => errors.push(source.error_at(&r.name, format!("routes[{i}].facts.residency-class"), "a data class is a string")),
        }
        if let Some(t) = r.settings.get(policy) {
            for key in DERIVED_SETTINGS.iter().filter(|k| t.contains_key(**k)) {
                errors.push(source.error_at(&r.name, format!("routes[{i}].settings.{policy}.{key}"), format!("set by the host from [residency] {file_name}")));
            }
        }
    }
    if let Some(def) = config.policies.get(policy) {
        for key in DERIVED_SETTINGS.iter().filter(|k| def.settings.contains_key(**k)) {
            errors.push(source.error_at(&def.component, format!("policies.{policy}.settings.{key}"), format!("set by the host from [residency] {file_name}")));
        }
    }
}

impl Residency {
    /// The settings the host adds to the residency policy's own:
    ///
    /// - `namespace`: the policy's name (where its facts go);
    /// - `jurisdictions`: list of jurisdiction names;
    /// - `regions`: list of `region=jurisdiction`;
    /// - `pools`: list of `pool=region`;
    /// - `rules`: one rule per line, tab-separated: name, subject, class,
    ///   allow (a list), consent (empty when none). Names are checked to be
    ///   free of tabs, newlines, `,`, `=` and `%`.
    pub fn policy_settings(&self, pools: &[config::Pool]) -> BTreeMap<String, String> {
        let r = &self.regions;
        let pairs = |it: &mut dyn Iterator<Item = (&str, &str)>| {
            let items: Vec<String> = it.map(|(k, v)| format!("{k}={v}")).collect();
            encode_list(items.iter().map(String::as_str))
        };
        let mut rules = String::new();
        for rule in &r.rules {
            let allow = encode_list(rule.allow.iter().map(String::as_str));
            rules.push_str(&[rule.name.as_str(), &rule.subject, &rule.class, &allow, rule.consent.as_deref().unwrap_or("")].join("\t"));
            rules.push('\n');
        }
        BTreeMap::from([
            ("namespace".to_string(), self.policy.clone()),
            ("jurisdictions".to_string(), encode_list(r.jurisdictions.iter().map(String::as_str))),
            ("regions".to_string(), pairs(&mut r.regions.iter().map(|(k, v)| (k.as_str(), v.as_str())))),
            ("pools".to_string(), pairs(&mut pools.iter().filter_map(|p| Some((p.name.get_ref().as_str(), p.region.as_ref()?.get_ref().as_str()))))),
            ("rules".to_string(), rules),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source { file: "regions.toml".into(), base_dir: ".".into(), text: text.into() }
    }

    fn check(text: &str) -> Result<Regions, Vec<String>> {
        let s = src(text);
        let f: RegionsFile = parse_as(&s).map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        check_regions(&s, &f).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    const GOOD: &str = r#"jurisdictions = ["EU", "US", "IN"]
classes = ["health", "public"]
[regions]
fsn1 = "EU"
ash = "US"
[[rules]]
name = "eu-health"
subject = "EU"
class = "health"
allow = ["EU"]
[[rules]]
name = "in-health-eu-consent"
subject = "IN"
class = "health"
allow = ["EU"]
consent = "eu-processing"
[[rules]]
name = "public"
subject = "*"
class = "public"
allow = ["*"]
"#;

    #[test]
    fn a_good_file_checks_and_renders() {
        let regions = check(GOOD).unwrap();
        assert_eq!(regions.jurisdictions, ["EU", "US", "IN"]);
        assert_eq!(regions.regions["ash"], "US");
        assert_eq!(regions.rules[1].consent.as_deref(), Some("eu-processing"));
        let pools: Vec<config::Pool> = vec![
            toml::from_str("name = \"a\"\nregion = \"fsn1\"\ntargets = [\"127.0.0.1:1\"]").unwrap(),
            toml::from_str("name = \"b\"\nregion = \"ash\"\ntargets = [\"127.0.0.1:2\"]").unwrap(),
        ];
        let r = Residency { file: "regions.toml".into(), text: GOOD.into(), policy: "residency".into(), regions };
        let s = r.policy_settings(&pools);
        assert_eq!(s["namespace"], "residency");
        assert_eq!(s["jurisdictions"], "EU,US,IN");
        assert_eq!(s["regions"], "ash=US,fsn1=EU");
        assert_eq!(s["pools"], "a=fsn1,b=ash");
        assert_eq!(s["rules"], "eu-health\tEU\thealth\tEU\t\nin-health-eu-consent\tIN\thealth\tEU\teu-processing\npublic\t*\tpublic\t*\t\n");
    }

    #[test]
    fn a_rule_naming_an_unknown_jurisdiction_is_refused_where_it_is() {
        let text = GOOD.replace("allow = [\"EU\"]\nconsent", "allow = [\"EU\", \"UK\"]\nconsent");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs, ["regions.toml:15:16: rules[1].allow[1]: unknown jurisdiction \"UK\" (jurisdictions: EU, US, IN)"]);
        let errs = check(&GOOD.replace("subject = \"EU\"", "subject = \"EEA\"")).unwrap_err();
        assert_eq!(errs, ["regions.toml:8:11: rules[0].subject: unknown jurisdiction \"EEA\" (jurisdictions: EU, US, IN) or \"*\""]);
    }

    #[test]
    fn names_classes_and_regions_are_checked() {
        let errs = check(&GOOD.replace("ash = \"US\"", "ash = \"USA\"").replace("class = \"public\"", "class = \"static\"")).unwrap_err();
        assert_eq!(
            errs,
            [
                "regions.toml:5:7: regions.ash: unknown jurisdiction \"USA\" (jurisdictions: EU, US, IN)",
                "regions.toml:20:9: rules[2].class: unknown data class \"static\" (classes: health, public) or \"*\"",
            ]
        );
        let errs = check(&GOOD.replace("name = \"public\"", "name = \"eu-health\"").replace("allow = [\"*\"]", "allow = [\"*\", \"EU\"]")).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].ends_with("rules[2].name: duplicate rule name \"eu-health\""), "{errs:?}");
        assert!(errs[1].ends_with("rules[2].allow[0]: \"*\" (anywhere) must be the only entry when present"), "{errs:?}");
        let errs = check("jurisdictions = []\nclasses = [\"a b\"]\n").unwrap_err();
        assert_eq!(errs, ["regions.toml: jurisdictions: at least one jurisdiction is required", "regions.toml:2:12: classes[0]: \"a b\" is not a valid data class name (letters, digits, '-', '_')"]);
        let errs = check(&GOOD.replace("consent = \"eu-processing\"", "consent = \"eu processing\"")).unwrap_err();
        assert!(errs[0].contains("rules[1].consent: expected a consent name"), "{errs:?}");
        let errs = check("jurisdictions = [\"EU\"]\nclasses = [\"x\"]\n[[rules]]\nname = \"r\"\nsubject = \"EU\"\nclass = \"x\"\nallow = []\n").unwrap_err();
        assert_eq!(errs, ["regions.toml:4:8: rules[0].allow: a rule allows at least one jurisdiction (or \"*\"); leave a case without a rule to forbid it"]);
    }
}
