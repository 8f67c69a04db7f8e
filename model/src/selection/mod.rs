//! Instance selection: which EC2 instance types a pod may get, best first (the
//! rest are the fallbacks when a launch meets InsufficientInstanceCapacity), and
//! why, in words for the pod's Event.
//!
//! Modes, chosen by `orca.research/selection` (default `chain`):
//! - `explicit`: the type named by `orca.research/instance-type`; it must be
//!   known, allowed, and fit the pod, else the pod fails saying which.
//! - `template`: the types of the config template named by
//!   `orca.research/workload-template`, in its order, keeping those allowed
//!   that fit.
//! - `auto`: every allowed type that fits the pod's CPU, memory, GPU count,
//!   GPU model and image architecture, cheapest first (spot prices for spot,
//!   under `orca.research/max-spot-price` when set).
//! - `chain`: explicit when the pod names a type, else template when it names
//!   one, else auto.
//!
//! Allowed and denied lists are name patterns with `*` (`g5.*`); a type must
//! match an allowed pattern (when there are any) and no denied one.
//!
//! - [`catalogue`]: instance types and prices, and whether one fits a pod.
//! - [`annotations`]: the pod annotations, parsed and checked.

pub mod annotations;
pub mod catalogue;

use std::collections::BTreeMap;

pub use annotations::{AnnotationError, CapacityType, LaunchAnnotations, Mode};
pub use catalogue::{Arch, Catalogue, InstanceType, Needs};

/// A named template of the config: instance types in order of preference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template {
    /// Instance type names, best first.
    pub instance_types: Vec<String>,
}

/// The selection settings of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Templates by name.
    pub templates: BTreeMap<String, Template>,
    /// Name patterns (`g5.*`) types must match; empty: every type.
    pub allowed: Vec<String>,
    /// Name patterns no type may match.
    pub denied: Vec<String>,
    /// How many candidates to keep: the choice and its fallbacks.
    pub max_candidates: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            templates: BTreeMap::new(),
            allowed: Vec::new(),
            denied: Vec::new(),
            max_candidates: 5,
        }
    }
}

/// An instance type to try, with the price that ranked it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The type.
    pub instance_type: String,
    /// USD per hour (spot or on-demand), when known.
    pub usd_per_hour: Option<f64>,
}

/// What selection decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The mode that decided (never `Chain`).
    pub mode: Mode,
    /// Types to try, best first.
    pub candidates: Vec<Candidate>,
    /// Why, for the pod's Event.
    pub reason: String,
}

/// Why no instance type can be chosen; the pod fails with this message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectionError {
    /// An annotation is unknown or malformed.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// The named type is not in the catalogue.
    #[error("instance type {0} is not offered in this region")]
    UnknownType(String),
    /// The named template is not in the config.
    #[error("workload template {name:?} is not configured (templates: {known})")]
    UnknownTemplate {
        /// The name asked for.
        name: String,
        /// The configured ones.
        known: String,
    },
    /// The named type is denied or not allowed.
    #[error("instance type {name} is not allowed: {why}")]
    NotAllowed {
        /// The type.
        name: String,
        /// Which list keeps it out.
        why: String,
    },
    /// The named type cannot run the pod.
    #[error("{0}")]
    Unfit(String),
    /// No type fits.
    #[error("no instance type fits the pod ({mode}): {reasons}")]
    NothingFits {
        /// The mode.
        mode: &'static str,
        /// Why, for the closest types.
        reasons: String,
    },
}

/// Chooses the instance types for a pod with `needs` and `annotations`.
pub fn select(
    annotations: &LaunchAnnotations,
    needs: &Needs,
    catalogue: &Catalogue,
    policy: &Policy,
) -> Result<Decision, SelectionError> {
    let mut needs = needs.clone();
    if needs.gpu_model.is_none() {
        needs.gpu_model = annotations.gpu_model.clone();
    }
    let mode = match annotations.mode {
        Mode::Chain if annotations.instance_type.is_some() => Mode::Explicit,
        Mode::Chain if annotations.template.is_some() => Mode::Template,
        Mode::Chain => Mode::Auto,
        other => other,
    };
    let spot = annotations.capacity_type == CapacityType::Spot;
    match mode {
        Mode::Explicit => {
            let name = annotations.instance_type.as_deref().unwrap_or_default();
            let t = catalogue
                .get(name)
                .ok_or_else(|| SelectionError::UnknownType(name.into()))?;
            if let Some(why) = policy.keeps_out(name) {
                return Err(SelectionError::NotAllowed {
                    name: name.into(),
                    why,
                });
            }
            if let Some(why) = t.unfit(&needs) {
                return Err(SelectionError::Unfit(why));
            }
            Ok(Decision {
                mode,
                candidates: vec![candidate(t, spot)],
                reason: format!("{name}, named by {}", annotations::INSTANCE_TYPE),
            })
        }
        Mode::Template => {
            let name = annotations.template.as_deref().unwrap_or_default();
            let template =
                policy
                    .templates
                    .get(name)
                    .ok_or_else(|| SelectionError::UnknownTemplate {
                        name: name.into(),
                        known: policy
                            .templates
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
            let mut reasons = Vec::new();
            let mut candidates = Vec::new();
            for type_name in &template.instance_types {
                match usable(catalogue, policy, type_name, &needs) {
                    Ok(t) => candidates.push(candidate(t, spot)),
                    Err(why) => reasons.push(why),
                }
            }
            candidates.truncate(policy.max_candidates.max(1));
            let Some(first) = candidates.first() else {
                return Err(SelectionError::NothingFits {
                    mode: "template",
                    reasons: reasons.join("; "),
                });
            };
            Ok(Decision {
                mode,
                reason: format!(
                    "{}, the first usable type of template {name:?}",
                    first.instance_type
                ),
                candidates,
            })
        }
        Mode::Auto | Mode::Chain => auto(annotations, &needs, catalogue, policy, spot),
    }
}

fn auto(
    annotations: &LaunchAnnotations,
    needs: &Needs,
    catalogue: &Catalogue,
    policy: &Policy,
    spot: bool,
) -> Result<Decision, SelectionError> {
    let mut reasons = Vec::new();
    let mut fitting: Vec<&InstanceType> = Vec::new();
    for t in catalogue.iter() {
        match usable(catalogue, policy, &t.name, needs) {
            Ok(t) => match (annotations.max_spot_price, t.price(spot)) {
                (Some(max), Some(price)) if spot && price > max => reasons.push(format!(
                    "{}'s spot price ${price:.4}/h is above the maximum ${max:.4}/h",
                    t.name
                )),
                _ => fitting.push(t),
            },
            Err(why) => reasons.push(why),
        }
    }
    // Cheapest first; unknown prices last; then by name, for a stable order.
    fitting.sort_by(|a, b| {
        let (pa, pb) = (a.price(spot), b.price(spot));
        match (pa, pb) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then_with(|| a.name.cmp(&b.name))
    });
    let count = fitting.len();
    let candidates: Vec<Candidate> = fitting
        .into_iter()
        .take(policy.max_candidates.max(1))
        .map(|t| candidate(t, spot))
        .collect();
    let Some(first) = candidates.first() else {
        reasons.truncate(8);
        return Err(SelectionError::NothingFits {
            mode: "auto",
            reasons: reasons.join("; "),
        });
    };
    let price = first
        .usd_per_hour
        .map_or("an unknown price".to_owned(), |p| format!("${p:.4}/h"));
    Ok(Decision {
        mode: Mode::Auto,
        reason: format!(
            "{}, the cheapest of {count} types that fit ({price}, {})",
            first.instance_type,
            if spot { "spot" } else { "on-demand" }
        ),
        candidates,
    })
}

/// The type `name` when it is known, allowed and fits; else why not.
fn usable<'a>(
    catalogue: &'a Catalogue,
    policy: &Policy,
    name: &str,
    needs: &Needs,
) -> Result<&'a InstanceType, String> {
    let t = catalogue
        .get(name)
        .ok_or_else(|| format!("{name} is not offered in this region"))?;
    if let Some(why) = policy.keeps_out(name) {
        return Err(format!("{name} is not allowed: {why}"));
    }
    match t.unfit(needs) {
        Some(why) => Err(why),
        None => Ok(t),
    }
}

fn candidate(t: &InstanceType, spot: bool) -> Candidate {
    Candidate {
        instance_type: t.name.clone(),
        usd_per_hour: t.price(spot),
    }
}

impl Policy {
    /// Why the allowed/denied lists keep `name` out; `None` when they let it in.
    pub fn keeps_out(&self, name: &str) -> Option<String> {
        if let Some(p) = self.denied.iter().find(|p| glob(p, name)) {
            return Some(format!("denied by {p:?}"));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|p| glob(p, name)) {
            return Some(format!("matches none of the allowed {:?}", self.allowed));
        }
        None
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::catalogue::tests::catalogue;
    use super::*;

    fn needs(cpu: u64, mem_gib: u64, gpus: u32) -> Needs {
        Needs {
            cpu_millis: cpu,
            memory_bytes: mem_gib << 30,
            gpus,
            ..Default::default()
        }
    }

    fn names(d: &Decision) -> Vec<&str> {
        d.candidates
            .iter()
            .map(|c| c.instance_type.as_str())
            .collect()
    }

    #[test]
    fn auto_takes_the_cheapest_type_that_fits() {
        let c = catalogue();
        let p = Policy::default();
        let a = LaunchAnnotations::default();
        let d = select(&a, &needs(2000, 8, 1), &c, &p).unwrap();
        assert_eq!(d.mode, Mode::Auto);
        assert_eq!(
            names(&d),
            [
                "g5g.xlarge",
                "g4dn.xlarge",
                "g5.xlarge",
                "g5.2xlarge",
                "g5.12xlarge"
            ]
        );
        assert!(
            d.reason
                .contains("g5g.xlarge, the cheapest of 6 types that fit ($0.4200/h, on-demand)"),
            "{}",
            d.reason
        );
        // amd64 images never land on arm64.
        let x86 = Needs {
            architectures: vec![Arch::X86_64],
            ..needs(2000, 8, 1)
        };
        assert_eq!(names(&select(&a, &x86, &c, &p).unwrap())[0], "g4dn.xlarge");
        // A GPU model from the annotation; spot prices rank for spot.
        let spot_a10g = LaunchAnnotations {
            gpu_model: Some("a10g".into()),
            capacity_type: CapacityType::Spot,
            ..Default::default()
        };
        let d = select(&spot_a10g, &needs(1000, 1, 1), &c, &p).unwrap();
        assert_eq!(names(&d), ["g5.2xlarge", "g5.xlarge", "g5.12xlarge"]);
        assert!(d.reason.contains("spot"));
        // Above the spot cap: out, and said so when nothing is left.
        let capped = LaunchAnnotations {
            max_spot_price: Some(0.39),
            ..spot_a10g
        };
        let e = select(&capped, &needs(1000, 1, 1), &c, &p).unwrap_err();
        assert!(e.to_string().contains("above the maximum $0.3900/h"), "{e}");
    }

    #[test]
    fn auto_respects_the_lists_and_says_why_nothing_fits() {
        let c = catalogue();
        let p = Policy {
            allowed: vec!["g5.*".into(), "p4d.*".into()],
            denied: vec!["*.12xlarge".into()],
            max_candidates: 2,
            ..Default::default()
        };
        let d = select(&LaunchAnnotations::default(), &needs(1000, 1, 1), &c, &p).unwrap();
        assert_eq!(names(&d), ["g5.xlarge", "g5.2xlarge"]);
        let e = select(&LaunchAnnotations::default(), &needs(1000, 1, 16), &c, &p).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("no instance type fits the pod (auto)"),
            "{text}"
        );
        assert!(
            text.contains("p4d.24xlarge has 8 GPUs; the pod requests 16"),
            "{text}"
        );
        assert!(
            text.contains("g5.12xlarge is not allowed: denied by \"*.12xlarge\""),
            "{text}"
        );
    }

    #[test]
    fn explicit_needs_a_known_allowed_type_that_fits() {
        let c = catalogue();
        let p = Policy {
            denied: vec!["p4d.*".into()],
            ..Default::default()
        };
        let named = |t: &str| LaunchAnnotations {
            instance_type: Some(t.into()),
            ..Default::default()
        };
        let d = select(&named("g5.2xlarge"), &needs(1000, 1, 1), &c, &p).unwrap();
        assert_eq!((d.mode, names(&d)), (Mode::Explicit, vec!["g5.2xlarge"]));
        assert!(d.reason.contains(annotations::INSTANCE_TYPE));
        assert_eq!(
            select(&named("x9.huge"), &needs(1, 1, 0), &c, &p),
            Err(SelectionError::UnknownType("x9.huge".into()))
        );
        assert!(matches!(
            select(&named("p4d.24xlarge"), &needs(1, 1, 0), &c, &p),
            Err(SelectionError::NotAllowed { .. })
        ));
        let e = select(&named("g5.xlarge"), &needs(8000, 1, 0), &c, &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "g5.xlarge has 4 vCPUs; the pod requests 8000m"
        );
    }

    #[test]
    fn templates_keep_their_order_and_skip_what_cannot_serve() {
        let c = catalogue();
        let p = Policy {
            templates: BTreeMap::from([(
                "llm".to_owned(),
                Template {
                    instance_types: vec![
                        "p5.48xlarge".into(),
                        "p4d.24xlarge".into(),
                        "g5.12xlarge".into(),
                    ],
                },
            )]),
            ..Default::default()
        };
        let llm = LaunchAnnotations {
            template: Some("llm".into()),
            ..Default::default()
        };
        let d = select(&llm, &needs(8000, 64, 4), &c, &p).unwrap();
        assert_eq!(d.mode, Mode::Template);
        assert_eq!(names(&d), ["p4d.24xlarge", "g5.12xlarge"]);
        let e = select(&llm, &needs(8000, 64, 16), &c, &p).unwrap_err();
        assert!(e.to_string().contains("p5.48xlarge is not offered"), "{e}");
        let other = LaunchAnnotations {
            template: Some("cv".into()),
            ..Default::default()
        };
        assert_eq!(
            select(&other, &needs(1, 1, 0), &c, &p)
                .unwrap_err()
                .to_string(),
            "workload template \"cv\" is not configured (templates: llm)"
        );
    }

    #[test]
    fn chain_goes_explicit_then_template_then_auto() {
        let c = catalogue();
        let p = Policy {
            templates: BTreeMap::from([(
                "small".to_owned(),
                Template {
                    instance_types: vec!["m5.large".into()],
                },
            )]),
            ..Default::default()
        };
        let both = LaunchAnnotations {
            instance_type: Some("g5.xlarge".into()),
            template: Some("small".into()),
            ..Default::default()
        };
        assert_eq!(
            select(&both, &needs(1, 1, 0), &c, &p).unwrap().mode,
            Mode::Explicit
        );
        let template = LaunchAnnotations {
            instance_type: None,
            ..both.clone()
        };
        assert_eq!(
            select(&template, &needs(1, 1, 0), &c, &p).unwrap().mode,
            Mode::Template
        );
        let auto = LaunchAnnotations::default();
        assert_eq!(
            select(&auto, &needs(1, 1, 0), &c, &p).unwrap().mode,
            Mode::Auto
        );
        // Forcing auto ignores a named type.
        let forced = LaunchAnnotations {
            mode: Mode::Auto,
            ..both
        };
        assert_eq!(
            names(&select(&forced, &needs(1, 1, 0), &c, &p).unwrap())[0],
            "c7g.large"
        );
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob("g5.*", "g5.xlarge"));
        assert!(!glob("g5.*", "g5g.xlarge"));
        assert!(glob("*.12xlarge", "g5.12xlarge"));
        assert!(glob("p*d.*", "p4d.24xlarge"));
        assert!(glob("m5.large", "m5.large"));
        assert!(!glob("m5.large", "m5.xlarge"));
        assert!(glob("*", "anything"));
        assert!(!glob("g*.x*large", "g5.large"));
    }
}
