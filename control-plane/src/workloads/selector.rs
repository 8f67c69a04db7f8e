//! Label selectors as Kubernetes writes them: `matchLabels` and
//! `matchExpressions` (`In`, `NotIn`, `Exists`, `DoesNotExist`), all ANDed.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Checks a selector's operators; the error names the bad one.
pub fn validate(s: &LabelSelector) -> Result<(), String> {
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("selector {}: {} needs values", e.key, e.operator));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "selector {}: {} takes no values",
                    e.key, e.operator
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "selector {}: operator {other:?} is not In, NotIn, Exists or DoesNotExist",
                    e.key
                ));
            }
        }
    }
    if s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
    {
        return Err("selector is empty: it would select every pod".into());
    }
    Ok(())
}

/// Whether `labels` satisfy the selector.
pub fn matches<'a>(s: &LabelSelector, labels: impl Fn(&str) -> Option<&'a str>) -> bool {
    let labels_ok = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels(k) == Some(v.as_str()));
    let expressions_ok = s.match_expressions.iter().flatten().all(|e| {
        let have = labels(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.iter().any(|v| v == h)),
            "NotIn" => have.is_none_or(|h| values.iter().all(|v| v != h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// [`matches`] over a map.
pub fn matches_map(s: &LabelSelector, labels: &HashMap<String, String>) -> bool {
    matches(s, |k| labels.get(k).map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn selector(json: serde_json::Value) -> LabelSelector {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn labels_and_expressions_all_hold() {
        let s = selector(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }));
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(matches_map(&s, &labels(&[("app", "web"), ("tier", "a")])));
        assert!(!matches_map(&s, &labels(&[("app", "web"), ("tier", "c")])));
        assert!(!matches_map(
            &s,
            &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])
        ));
        assert!(!matches_map(&s, &labels(&[("tier", "a")])));
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn bad_selectors_are_named() {
        assert!(
            validate(&LabelSelector::default())
                .unwrap_err()
                .contains("empty")
        );
        let s = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(validate(&s).unwrap_err().contains("Near"));
    }
}
