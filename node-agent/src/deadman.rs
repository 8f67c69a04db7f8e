//! The dead-man's switch: an agent that has not reached its control plane for
//! `--dead-man-ms` while no pod of its runs powers its host off, so a crashed or
//! lost control plane cannot leave GPU instances running (and billing) with
//! nothing on them. A pod past its `orca.research/max-lifetime` is stopped by
//! the agent itself (its `activeDeadlineSeconds`), so such a host powers off
//! too once the period has passed.
//!
//! Powering off sits behind [`PowerOff`]: on EC2 ([`PowerOffMode::System`],
//! set by the AMI's unit) it is a real `systemctl poweroff`, and EC2 terminates
//! the instance (ORCA launches with shutdown behaviour `terminate`); on a
//! simulated host ([`PowerOffMode::Exit`], the default) the agent exits with
//! [`POWER_OFF_EXIT`] and whoever plays the instance applies its shutdown
//! behaviour. A simulated host never powers off the machine it runs on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::pods::PodManager;

/// The exit status of an agent that "powers off" in [`PowerOffMode::Exit`].
pub const POWER_OFF_EXIT: i32 = 99;

/// How the host is powered off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOffMode {
    /// `systemctl poweroff` (then `poweroff`): a real instance.
    System,
    /// The agent exits with [`POWER_OFF_EXIT`]: a simulated host.
    Exit,
}

impl PowerOffMode {
    /// `system` or `exit`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Self::System),
            "exit" => Some(Self::Exit),
            _ => None,
        }
    }
}

/// Powers the host off.
pub trait PowerOff: Send + Sync {
    /// Does it; returns only if it could not.
    fn power_off(&self, why: &str);
}

/// A real power-off.
pub struct SystemPowerOff;

impl PowerOff for SystemPowerOff {
    fn power_off(&self, why: &str) {
        error!(why, "dead-man's switch: powering the host off");
        for (program, args) in [("systemctl", &["poweroff"][..]), ("poweroff", &[][..])] {
            match std::process::Command::new(program).args(args).status() {
                Ok(s) if s.success() => return,
                Ok(s) => warn!(program, status = %s, "power-off refused"),
                Err(e) => warn!(program, error = %e, "power-off not run"),
            }
        }
    }
}

/// A simulated host's power-off: the agent exits.
pub struct ExitPowerOff;

impl PowerOff for ExitPowerOff {
    fn power_off(&self, why: &str) {
        error!(
            why,
            code = POWER_OFF_EXIT,
            "dead-man's switch: powering off (the agent exits)"
        );
        std::process::exit(POWER_OFF_EXIT);
    }
}

/// The power-off of `mode`.
pub fn power_off(mode: PowerOffMode) -> Arc<dyn PowerOff> {
    match mode {
        PowerOffMode::System => Arc::new(SystemPowerOff),
        PowerOffMode::Exit => Arc::new(ExitPowerOff),
    }
}

/// When the control plane last answered a heartbeat (or the agent started).
#[derive(Clone)]
pub struct Contact(Arc<Mutex<Instant>>);

impl Default for Contact {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Contact {
    /// The control plane answered.
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long since it last did.
    pub fn silent_for(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// Whether the switch trips: silent for the whole period with nothing running.
pub fn trips(silent: Duration, period: Duration, unfinished_pods: usize) -> bool {
    silent >= period && unfinished_pods == 0
}

/// Watches until the switch trips, then powers off.
pub async fn run(period: Duration, contact: Contact, pods: PodManager, power: Arc<dyn PowerOff>) {
    info!(
        period_ms = period.as_millis() as u64,
        "dead-man's switch armed"
    );
    let every = (period / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        let silent = contact.silent_for();
        if trips(silent, period, pods.unfinished()) {
            let why = format!(
                "no answer from the control plane for {:.1}s (--dead-man-ms {}) and no pod running",
                silent.as_secs_f64(),
                period.as_millis()
            );
            power.power_off(&why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_only_when_silent_long_enough_with_nothing_running() {
        let period = Duration::from_secs(60);
        assert!(!trips(Duration::from_secs(59), period, 0));
        assert!(!trips(Duration::from_secs(61), period, 1));
        assert!(trips(Duration::from_secs(60), period, 0));
        assert_eq!(PowerOffMode::parse("exit"), Some(PowerOffMode::Exit));
        assert_eq!(PowerOffMode::parse("system"), Some(PowerOffMode::System));
        assert_eq!(PowerOffMode::parse("reboot"), None);
    }
}
