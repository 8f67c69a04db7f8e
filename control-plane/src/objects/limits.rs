//! LimitRanges: per-container defaults and bounds in a namespace, applied to
//! every new pod as Kubernetes' LimitRanger does: a container without a limit
//! gets `default`, one without a request gets `defaultRequest` (or its limit),
//! and then each request must be at least `min` and each limit at most `max`.
//! Only `type: Container` items are served (Pod and PersistentVolumeClaim
//! items are refused when applied, saying so).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, LimitRange, LimitRangeItem, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

type Amounts = BTreeMap<String, Quantity>;

fn millis(resource: &str) -> bool {
    resource == "cpu"
}

fn value(resource: &str, q: &Quantity) -> Option<u64> {
    orca_model::quantity::parse(&q.0, millis(resource))
}

fn items(l: &LimitRange) -> impl Iterator<Item = &LimitRangeItem> {
    l.spec.iter().flat_map(|s| s.limits.iter())
}

/// Checks a LimitRange's manifest: Container items, quantities that parse.
pub fn validate(l: &LimitRange) -> Result<(), String> {
    for (i, item) in items(l).enumerate() {
        if item.type_ != "Container" {
            return Err(format!(
                "spec.limits[{i}].type: {:?} is not served in standalone mode (only Container)",
                item.type_
            ));
        }
        if item.max_limit_request_ratio.is_some() {
            return Err(format!(
                "spec.limits[{i}].maxLimitRequestRatio is not served in standalone mode"
            ));
        }
        for (field, amounts) in [
            ("default", &item.default),
            ("defaultRequest", &item.default_request),
            ("min", &item.min),
            ("max", &item.max),
        ] {
            for (resource, q) in amounts.iter().flatten() {
                value(resource, q).ok_or_else(|| {
                    format!(
                        "spec.limits[{i}].{field}.{resource}: {:?} is not a quantity",
                        q.0
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// Fills a container's missing limits and requests from one item, in
/// Kubernetes' order: a request the user left unset follows the user's limit
/// (API defaulting, before admission); then missing limits get `default`, and
/// missing requests `defaultRequest` (which itself defaults to `default`).
fn default_container(c: &mut Container, item: &LimitRangeItem) {
    let res = c.resources.get_or_insert_with(Default::default);
    let given: Amounts = res.limits.clone().unwrap_or_default();
    let requests = res.requests.get_or_insert_with(Amounts::new);
    for (resource, q) in given {
        requests.entry(resource).or_insert(q);
    }
    for (resource, q) in item.default.iter().flatten() {
        let limits = res.limits.get_or_insert_with(Amounts::new);
        limits.entry(resource.clone()).or_insert_with(|| q.clone());
    }
    let default_request = item.default_request.iter().flatten();
    for (resource, q) in default_request.chain(item.default.iter().flatten()) {
        requests
            .entry(resource.clone())
            .or_insert_with(|| q.clone());
    }
    if requests.is_empty() {
        res.requests = None;
    }
}

/// Why a container breaks an item's bounds (or, defaults filled in, asks for
/// more than its limit); `None` when it keeps them.
fn container_refusal(c: &Container, item: &LimitRangeItem) -> Option<String> {
    let res = c.resources.as_ref();
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    for (resource, request) in requests.into_iter().flatten() {
        let limit = limits.and_then(|l| l.get(resource));
        if let (Some(want), Some(cap)) = (
            value(resource, request),
            limit.and_then(|l| value(resource, l)),
        ) && want > cap
        {
            return Some(format!(
                "requests.{resource}: {} must be less than or equal to the {resource} limit of {}",
                request.0,
                limit.map(|l| l.0.as_str()).unwrap_or_default()
            ));
        }
    }
    for (resource, min) in item.min.iter().flatten() {
        let floor = value(resource, min)?;
        match requests.and_then(|r| r.get(resource)) {
            None => {
                return Some(format!(
                    "minimum {resource} usage per Container is {}.  No request is specified",
                    min.0
                ));
            }
            Some(q) if value(resource, q).is_some_and(|v| v < floor) => {
                return Some(format!(
                    "minimum {resource} usage per Container is {}, but request is {}",
                    min.0, q.0
                ));
            }
            Some(_) => {}
        }
    }
    for (resource, max) in item.max.iter().flatten() {
        let ceiling = value(resource, max)?;
        match limits.and_then(|l| l.get(resource)) {
            None => {
                return Some(format!(
                    "maximum {resource} usage per Container is {}.  No limit is specified",
                    max.0
                ));
            }
            Some(q) if value(resource, q).is_some_and(|v| v > ceiling) => {
                return Some(format!(
                    "maximum {resource} usage per Container is {}, but limit is {}",
                    max.0, q.0
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// Applies the namespace's LimitRanges (`(name, range)`) to a new pod's spec:
/// defaults filled in; the error names the range and the bound broken.
pub fn admit(ranges: &[(String, LimitRange)], spec: &mut PodSpec) -> Result<(), String> {
    for (name, range) in ranges {
        for item in items(range) {
            for c in spec
                .init_containers
                .iter_mut()
                .flatten()
                .chain(spec.containers.iter_mut())
            {
                default_container(c, item);
            }
        }
        for item in items(range) {
            for c in spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
            {
                if let Some(why) = container_refusal(c, item) {
                    return Err(format!("limitrange {name}: container {:?}: {why}", c.name));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(item: serde_json::Value) -> LimitRange {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "bounds"},
            "spec": {"limits": [item]}
        }))
        .unwrap()
    }

    fn pod(resources: serde_json::Value) -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "containers": [{"name": "main", "image": "i", "resources": resources}]
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_what_the_container_leaves_out() {
        let r = range(serde_json::json!({
            "type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m"}
        }));
        assert_eq!(validate(&r), Ok(()));
        let mut spec = pod(serde_json::json!({"limits": {"memory": "1Gi"}}));
        admit(&[("bounds".into(), r)], &mut spec).unwrap();
        let res = spec.containers[0].resources.clone().unwrap();
        let limits = res.limits.unwrap();
        let requests = res.requests.unwrap();
        assert_eq!(limits["cpu"].0, "500m");
        assert_eq!(limits["memory"].0, "1Gi", "a limit given is kept");
        assert_eq!(requests["cpu"].0, "100m");
        assert_eq!(
            requests["memory"].0, "1Gi",
            "an unset request follows the limit"
        );
    }

    #[test]
    fn bounds_are_enforced_naming_the_range() {
        let r = range(serde_json::json!({
            "type": "Container",
            "min": {"cpu": "100m"},
            "max": {"cpu": "2", "memory": "1Gi"}
        }));
        let ranges = [("bounds".to_owned(), r)];
        let mut big = pod(serde_json::json!({"limits": {"cpu": "4", "memory": "512Mi"}}));
        assert_eq!(
            admit(&ranges, &mut big).unwrap_err(),
            "limitrange bounds: container \"main\": maximum cpu usage per Container is 2, but limit is 4"
        );
        let mut small = pod(
            serde_json::json!({"requests": {"cpu": "50m"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
        );
        assert!(
            admit(&ranges, &mut small)
                .unwrap_err()
                .contains("minimum cpu usage per Container is 100m, but request is 50m")
        );
        let mut unbounded = pod(serde_json::json!({"requests": {"cpu": "1"}}));
        assert!(
            admit(&ranges, &mut unbounded)
                .unwrap_err()
                .contains("No limit is specified")
        );
        let mut fine = pod(serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}}));
        assert_eq!(admit(&ranges, &mut fine), Ok(()));
        let defaults = [(
            "defaults".to_owned(),
            range(serde_json::json!({"type": "Container", "default": {"cpu": "200m"}})),
        )];
        let mut over = pod(serde_json::json!({"requests": {"cpu": "600m"}}));
        assert_eq!(
            admit(&defaults, &mut over).unwrap_err(),
            "limitrange defaults: container \"main\": requests.cpu: 600m must be less than or equal to the cpu limit of 200m"
        );
        let pod_item = range(serde_json::json!({"type": "Pod", "max": {"cpu": "2"}}));
        assert!(validate(&pod_item).unwrap_err().contains("only Container"));
    }
}
