//! The arithmetic of a Deployment's strategies, apart from any I/O: how far
//! the new ReplicaSet may grow and how far the old ones may shrink in one
//! step, in the Kubernetes deployment controller's terms (`maxSurge` rounds
//! up, `maxUnavailable` down, both zero means one unavailable).
//!
//! One difference, on purpose: a ReplicaSet's count here is the larger of what
//! it is told to keep and the pods it still has, pods being stopped included.
//! Kubernetes lets a new pod start while an old one is still terminating, so
//! for a grace period more than `replicas + maxSurge` pods run; ORCA's hosts
//! are paid for per instance, so the surge is a bound on running pods.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One ReplicaSet as a step sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Set {
    /// `spec.replicas`.
    pub desired: i32,
    /// Its pods that exist (being stopped included).
    pub pods: i32,
    /// Its pods that are Ready and not being stopped.
    pub available: i32,
}

impl Set {
    /// What it counts for toward the surge bound.
    fn weight(&self) -> i32 {
        self.desired.max(self.pods)
    }
}

/// `maxSurge` and `maxUnavailable` of `replicas`, as absolute numbers; an
/// error names the bad value.
pub fn bounds(
    replicas: i32,
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
) -> Result<(i32, i32), String> {
    let quarter = IntOrString::String("25%".into());
    let surge = scaled(max_surge.unwrap_or(&quarter), replicas, true, "maxSurge")?;
    let unavailable = scaled(
        max_unavailable.unwrap_or(&quarter),
        replicas,
        false,
        "maxUnavailable",
    )?;
    // More surge than replicas changes nothing (all new pods at once) and
    // keeps the arithmetic far from overflow.
    let surge = surge.min(replicas.max(1));
    Ok(if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    })
}

fn scaled(v: &IntOrString, replicas: i32, round_up: bool, field: &str) -> Result<i32, String> {
    match v {
        IntOrString::Int(n) if *n >= 0 => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| (0..=100).contains(p))
                .ok_or_else(|| {
                    format!("{field}: {s:?} is not a number or a percentage (0%..100%)")
                })?;
            let scaled = pct * i64::from(replicas);
            let scaled = scaled.min(i64::from(i32::MAX) * 100);
            let n = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            Ok(n as i32)
        }
        IntOrString::Int(n) => Err(format!("{field}: {n} is negative")),
    }
}

/// What one RollingUpdate step sets: the new set's `desired`, and each old
/// set's (same order as given, oldest first).
pub fn rolling_step(
    replicas: i32,
    surge: i32,
    unavailable: i32,
    new: Set,
    old: &[Set],
) -> (i32, Vec<i32>) {
    // Grow the new set within the surge.
    let mut new_desired = new.desired;
    if new_desired > replicas {
        new_desired = replicas;
    } else {
        let total: i32 = new.weight() + old.iter().map(Set::weight).sum::<i32>();
        let room = replicas + surge - total;
        if room > 0 {
            new_desired += room.min(replicas - new_desired);
        }
    }
    // Shrink old sets while enough stay available: first their pods that are
    // not available anyway, then available ones down to the minimum.
    let mut old_desired: Vec<i32> = old.iter().map(|s| s.desired).collect();
    let min_available = replicas - unavailable;
    let all: i32 = new_desired.max(new.pods) + old.iter().map(Set::weight).sum::<i32>();
    let new_unavailable = (new_desired - new.available).max(0);
    let mut budget = all - min_available - new_unavailable;
    for (i, s) in old.iter().enumerate() {
        if budget <= 0 {
            break;
        }
        let unhealthy = (old_desired[i] - s.available).max(0).min(budget);
        old_desired[i] -= unhealthy;
        budget -= unhealthy;
    }
    let available: i32 = new.available + old.iter().map(|s| s.available).sum::<i32>();
    let mut down = (available - min_available).max(0);
    for (i, s) in old.iter().enumerate() {
        if down <= 0 {
            break;
        }
        // Only pods still counted as available can be given up here.
        let give = old_desired[i].min(s.available).min(down);
        old_desired[i] -= give;
        down -= give;
    }
    (new_desired, old_desired)
}

/// What one Recreate step sets: old sets to zero; the new set to `replicas`
/// once no old pod is left.
pub fn recreate_step(replicas: i32, old: &[Set]) -> (i32, Vec<i32>) {
    let old_left = old.iter().any(|s| s.pods > 0);
    (if old_left { 0 } else { replicas }, vec![0; old.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(desired: i32, pods: i32, available: i32) -> Set {
        Set {
            desired,
            pods,
            available,
        }
    }

    #[test]
    fn bounds_round_surge_up_and_unavailable_down() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(bounds(3, None, None).unwrap(), (1, 0));
        assert_eq!(bounds(10, None, None).unwrap(), (3, 2));
        assert_eq!(
            bounds(3, Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0))).unwrap(),
            (0, 1)
        );
        assert_eq!(
            bounds(4, Some(&pct("50%")), Some(&pct("50%"))).unwrap(),
            (2, 2)
        );
        assert!(
            bounds(3, Some(&pct("150%")), None)
                .unwrap_err()
                .contains("maxSurge")
        );
        assert!(
            bounds(3, None, Some(&IntOrString::Int(-1)))
                .unwrap_err()
                .contains("maxUnavailable")
        );
    }

    /// Drives a rollout of 3 replicas with maxSurge 1, maxUnavailable 0 to
    /// the end, pods appearing and becoming Ready at once: the bounds hold at
    /// every step.
    #[test]
    fn a_rolling_update_never_passes_its_bounds() {
        let (replicas, surge, unavailable) = (3, 1, 0);
        let mut new = set(0, 0, 0);
        let mut old = vec![set(3, 3, 3)];
        for _ in 0..20 {
            let (n, o) = rolling_step(replicas, surge, unavailable, new, &old);
            // The sets converge to what they were told (pods start Ready).
            new = set(n, n, n);
            for (s, d) in old.iter_mut().zip(o) {
                *s = set(d, d, d);
            }
            let total = new.pods + old.iter().map(|s| s.pods).sum::<i32>();
            let ready = new.available + old.iter().map(|s| s.available).sum::<i32>();
            assert!(total <= replicas + surge, "{total} pods");
            assert!(ready >= replicas - unavailable, "{ready} ready");
        }
        assert_eq!((new, old[0].desired), (set(3, 3, 3), 0));
    }

    #[test]
    fn a_pod_being_stopped_holds_the_surge() {
        // Old set told 2 but still has 3 pods (one stopping), new set 1 Ready.
        let (n, o) = rolling_step(3, 1, 0, set(1, 1, 1), &[set(2, 3, 2)]);
        assert_eq!((n, o), (1, vec![2]), "no new pod until the old one is gone");
    }

    #[test]
    fn new_pods_that_never_become_ready_stop_the_rollout() {
        let mut new = set(0, 0, 0);
        let mut old = vec![set(3, 3, 3)];
        for _ in 0..10 {
            let (n, o) = rolling_step(3, 1, 0, new, &old);
            new = set(n, n, 0);
            old[0] = set(o[0], o[0], o[0]);
        }
        assert_eq!(new.desired, 1, "one surge pod, not ready");
        assert_eq!(old[0].desired, 3, "no old pod given up");
    }

    #[test]
    fn unavailable_old_pods_go_first() {
        let (_, o) = rolling_step(3, 0, 1, set(0, 0, 0), &[set(3, 3, 1)]);
        assert!(o[0] < 3);
    }

    #[test]
    fn recreate_waits_for_old_pods_to_be_gone() {
        assert_eq!(recreate_step(3, &[set(3, 3, 3)]), (0, vec![0]));
        assert_eq!(recreate_step(3, &[set(0, 1, 0)]), (0, vec![0]));
        assert_eq!(recreate_step(3, &[set(0, 0, 0)]), (3, vec![0]));
    }
}
