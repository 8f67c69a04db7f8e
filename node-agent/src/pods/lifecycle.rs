//! One container's lifecycle as explicit states, decided by a pure transition
//! function ([`next`]) and driven by [`drive`] against a [`ContainerRuntime`]
//! (containerd in production, a fake in the unit tests below, which run with
//! paused time).
//!
//! ```text
//!            ┌──────────── PullBackOff ◄── PullFailed ◄──┐ (pull error, attempts left)
//!            ▼                                           │
//!   ──► Pulling ──pulled──► Creating ──► Created ──started──► Running ──exit──► Terminated
//!            ▲                 │            │                                  │  │  │
//!            │                 ▼            ▼ (start error, tries left)        │  │  └─► Done(Completed|Failed)
//!            │              Failed      StartFailed ─────► Pulling             │  └─► InitFailed ─► Done(Failed)
//!            └── Restarting ◄── BackingOff ◄───────────────────────────────────┘ (restart policy says so)
//! ```
//!
//! The kubelet's rules, as the agent has always applied them:
//! - image pulls retry with back-off (ErrImagePull for a quarter of it, then
//!   ImagePullBackOff) and fail the pod after [`Timings::pull_attempts`] tries;
//!   ErrImageNeverPull fails it at once;
//! - a task that cannot start is retried with back-off the same number of times
//!   (RunContainerError), then fails the pod;
//! - an exit restarts the container per the restart policy (Always, OnFailure,
//!   Never), after the CrashLoopBackOff back-off: [`Timings::backoff`] (10 s
//!   doubling to 5 min), counted from the first again after a run of at least
//!   [`Timings::backoff_reset`] (10 min);
//! - an init container that exits 0 is done; one that fails with no restart to
//!   come fails the pod (InitContainerFailed).
//!
//! A stop (the pod is being stopped or has failed) is honoured before a pull,
//! once the pod's lifecycle lock is held for create/start, when an exit has been
//! recorded, and at the end of every back-off.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{PodError, Timings};
use crate::runtime::{ImageInfo, RuntimeError, TaskObservation, TaskStatus};
use crate::spec::RestartPolicy;
use crate::status::{self, ContainerState};

/// How a run ended, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit status.
    pub code: i32,
    /// When it exited, when the runtime knows.
    pub finished_at: Option<jiff::Timestamp>,
    /// Whether the kernel's OOM killer ended it.
    pub oom: bool,
}

/// The runtime calls one container's lifecycle makes: the pod's context
/// (spec, volumes, sandbox, GPUs, log files) is the implementation's.
pub trait ContainerRuntime: Send + Sync {
    /// Makes the container's image present, per its pull policy.
    fn pull(&self) -> impl Future<Output = Result<ImageInfo, RuntimeError>> + Send;
    /// Creates the container from `image`.
    fn create(&self, image: &ImageInfo) -> impl Future<Output = Result<(), PodError>> + Send;
    /// Starts a fresh task for run number `run` (replacing a stopped one).
    fn start(&self, run: u32) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The task as containerd reports it now; `None` when there is none.
    fn observe(&self)
    -> impl Future<Output = Result<Option<TaskObservation>, RuntimeError>> + Send;
    /// Waits until the task exits.
    fn wait(&self) -> impl Future<Output = Result<Exit, RuntimeError>> + Send;
    /// Drives the run's probes until `stop` flips; returns why a liveness or
    /// startup probe killed the run.
    fn probe(&self, stop: watch::Receiver<bool>) -> impl Future<Output = Option<String>> + Send;
}

/// Where a lifecycle's states are recorded (the pod manager's view of the
/// container, which the control plane is sent), and whether it must stop.
pub trait Ledger: Send + Sync {
    /// Records the state just entered.
    fn record(&self, state: &Lifecycle);
    /// Whether the pod is being stopped or has failed: nothing more may start.
    fn stopping(&self) -> bool;
}

/// How a lifecycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited 0 and will not run again.
    Completed,
    /// It cannot run, or exited non-zero with no restart to come (for an init
    /// container, the pod has failed).
    Failed,
    /// The pod is being stopped.
    Stopped,
}

/// One container's lifecycle state.
#[derive(Debug, Clone, PartialEq)]
pub enum Lifecycle {
    /// Making the image present (try `attempt`, 0-based).
    Pulling {
        /// Failed tries so far.
        attempt: u32,
    },
    /// A pull failed; reported ErrImagePull for a quarter of `backoff`.
    PullFailed {
        /// Failed tries so far.
        attempt: u32,
        /// The pull error.
        message: String,
        /// The whole wait before the next try.
        backoff: Duration,
    },
    /// Waiting out the rest of a pull back-off (ImagePullBackOff).
    PullBackOff {
        /// Failed tries so far.
        attempt: u32,
        /// The pull error.
        message: String,
        /// What is left of the wait.
        remaining: Duration,
    },
    /// Creating the container from its image.
    Creating {
        /// The image pulled.
        image: ImageInfo,
    },
    /// The container exists; its task is to be started.
    Created,
    /// A task could not start; retried (from the pull) after `backoff`.
    StartFailed {
        /// Failed starts in a row.
        failures: u32,
        /// The start error.
        message: String,
        /// The wait before the next try.
        backoff: Duration,
    },
    /// The task runs (or was started and not yet seen running: `confirmed`
    /// false, nothing new to report).
    Running {
        /// When the run started.
        since: jiff::Timestamp,
        /// Whether containerd confirmed the task running.
        confirmed: bool,
    },
    /// The run exited; what it looks like as a container state.
    Terminated {
        /// The terminated state (exit code, reason, times, probe message).
        state: ContainerState,
    },
    /// Waiting to restart after a crash (CrashLoopBackOff).
    BackingOff {
        /// The wait.
        delay: Duration,
        /// Restarts in a row before this one (counted from 0 again after a
        /// long enough run).
        restarts: u32,
        /// The run that ended.
        last: ContainerState,
    },
    /// The back-off is over: the restart count goes up and it runs again.
    Restarting,
    /// An init container failed with no restart to come: the pod fails.
    InitFailed {
        /// Why.
        message: String,
    },
    /// The container cannot run: the pod fails with `reason`.
    Failed {
        /// `ErrImagePull`, `ErrImageNeverPull`, `CreateContainerError`,
        /// `RunContainerError`, `ContainerMissing`.
        reason: &'static str,
        /// Detail.
        message: String,
    },
    /// The lifecycle is over.
    Done(Outcome),
}

impl Lifecycle {
    /// The container state the control plane is shown on entering this state;
    /// `None` where the state shown before stays.
    pub fn container_state(&self, image: &str, name: &str) -> Option<ContainerState> {
        let waiting = |reason: &str, message: String| ContainerState::Waiting {
            reason: reason.into(),
            message,
        };
        match self {
            Self::PullFailed { message, .. } => Some(waiting("ErrImagePull", message.clone())),
            Self::PullBackOff { message, .. } => Some(waiting(
                "ImagePullBackOff",
                format!("Back-off pulling image {image:?}: {message}"),
            )),
            Self::StartFailed { message, .. } => {
                Some(waiting("RunContainerError", message.clone()))
            }
            Self::Running {
                since,
                confirmed: true,
            } => Some(ContainerState::Running { started_at: *since }),
            Self::Terminated { state } => Some(state.clone()),
            Self::BackingOff { delay, .. } => Some(waiting(
                "CrashLoopBackOff",
                format!("back-off {delay:?} restarting failed container {name}"),
            )),
            Self::Failed { reason, message } => Some(waiting(reason, message.clone())),
            Self::Pulling { .. }
            | Self::Creating { .. }
            | Self::Created
            | Self::Running { .. }
            | Self::Restarting
            | Self::InitFailed { .. }
            | Self::Done(_) => None,
        }
    }
}

/// What happened in a state.
#[derive(Debug, Clone)]
pub enum Event {
    /// The image is present.
    Pulled(ImageInfo),
    /// The pull failed; `never` when the policy forbids pulling.
    PullError {
        /// imagePullPolicy Never and the image is absent.
        never: bool,
        /// The error.
        message: String,
    },
    /// The container was created (or existed already).
    Created,
    /// Creating failed.
    CreateError(String),
    /// The task was started at `at`; `running` when containerd confirmed it.
    Started {
        /// When.
        at: jiff::Timestamp,
        /// Seen running right after the start.
        running: bool,
    },
    /// Starting the task failed.
    StartError(String),
    /// The run exited.
    Exited {
        /// How.
        exit: Exit,
        /// When it ended (the runtime's time, or now).
        finished: jiff::Timestamp,
        /// Why a probe killed it.
        probe_failure: Option<String>,
    },
    /// The runtime lost track of the task.
    Lost(String),
    /// A wait (a back-off) is over.
    Elapsed,
    /// The pod is being stopped.
    Stop,
}

/// What decides a container's transitions: the pod's restart policy, whether
/// it is an init container, and the timings.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The pod's restart policy.
    pub policy: RestartPolicy,
    /// An init container.
    pub init: bool,
    /// Back-offs and attempts.
    pub timings: Timings,
    /// The container's name (for messages).
    pub name: String,
}

/// Counters kept across states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// The container exists in containerd (it is created once).
    pub created: bool,
    /// Failed task starts in a row.
    pub start_failures: u32,
    /// Crash restarts in a row (the back-off exponent).
    pub restarts: u32,
}

/// The transition function: the state after `event` in `state`.
pub fn next(state: Lifecycle, counters: &mut Counters, event: Event, rules: &Rules) -> Lifecycle {
    use Lifecycle as L;
    let tries = rules.timings.pull_attempts.max(1);
    match (state, event) {
        (L::Done(outcome), _) => L::Done(outcome),
        (_, Event::Stop) => L::Done(Outcome::Stopped),
        (L::Pulling { .. }, Event::Pulled(_)) if counters.created => L::Created,
        (L::Pulling { .. }, Event::Pulled(image)) => L::Creating { image },
        (
            L::Pulling { .. },
            Event::PullError {
                never: true,
                message,
            },
        ) => L::Failed {
            reason: "ErrImageNeverPull",
            message,
        },
        (L::Pulling { attempt }, Event::PullError { message, .. }) => {
            let attempt = attempt + 1;
            if attempt >= tries {
                L::Failed {
                    reason: "ErrImagePull",
                    message,
                }
            } else {
                L::PullFailed {
                    attempt,
                    message,
                    backoff: rules.timings.backoff(attempt - 1),
                }
            }
        }
        (
            L::PullFailed {
                attempt,
                message,
                backoff,
            },
            Event::Elapsed,
        ) => L::PullBackOff {
            attempt,
            message,
            remaining: backoff - backoff / 4,
        },
        (L::PullBackOff { attempt, .. }, Event::Elapsed) => L::Pulling { attempt },
        (L::Creating { .. }, Event::Created) => {
            counters.created = true;
            L::Created
        }
        (L::Creating { .. }, Event::CreateError(message)) => L::Failed {
            reason: "CreateContainerError",
            message,
        },
        (L::Created, Event::Started { at, running }) => {
            counters.start_failures = 0;
            L::Running {
                since: at,
                confirmed: running,
            }
        }
        (L::Created, Event::StartError(message)) => {
            counters.start_failures += 1;
            if counters.start_failures >= tries {
                L::Failed {
                    reason: "RunContainerError",
                    message,
                }
            } else {
                L::StartFailed {
                    failures: counters.start_failures,
                    message,
                    backoff: rules.timings.backoff(counters.start_failures - 1),
                }
            }
        }
        // Back to the pull, as the kubelet (imagePullPolicy Always pulls again).
        (L::StartFailed { .. }, Event::Elapsed) => L::Pulling { attempt: 0 },
        (
            L::Running { since, .. },
            Event::Exited {
                exit,
                finished,
                probe_failure,
            },
        ) => {
            let mut state = if exit.oom {
                ContainerState::oom_killed(Some(since), Some(finished))
            } else {
                ContainerState::exited(exit.code, Some(since), Some(finished))
            };
            if let (Some(failure), ContainerState::Terminated { message, .. }) =
                (probe_failure, &mut state)
            {
                *message = failure;
            }
            L::Terminated { state }
        }
        (L::Running { .. }, Event::Lost(message)) => L::Failed {
            reason: "ContainerMissing",
            message,
        },
        (L::Terminated { state }, Event::Elapsed) => {
            let (code, ran) = match &state {
                ContainerState::Terminated {
                    exit_code,
                    started_at: Some(started),
                    finished_at: Some(finished),
                    ..
                } => (
                    *exit_code,
                    Duration::try_from(finished.duration_since(*started)).unwrap_or_default(),
                ),
                ContainerState::Terminated { exit_code, .. } => (*exit_code, Duration::ZERO),
                _ => (0, Duration::ZERO),
            };
            if rules.init && code == 0 {
                return L::Done(Outcome::Completed);
            }
            if !status::restarts(rules.policy, code) {
                return if rules.init {
                    L::InitFailed {
                        message: format!("init container {} exited with {code}", rules.name),
                    }
                } else if code == 0 {
                    L::Done(Outcome::Completed)
                } else {
                    L::Done(Outcome::Failed)
                };
            }
            // The kubelet's back-off, reset after a long enough run.
            if ran >= rules.timings.backoff_reset {
                counters.restarts = 0;
            }
            let restarts = counters.restarts;
            counters.restarts += 1;
            L::BackingOff {
                delay: rules.timings.backoff(restarts),
                restarts,
                last: state,
            }
        }
        (L::BackingOff { .. }, Event::Elapsed) => L::Restarting,
        (L::Restarting, Event::Elapsed) => L::Pulling { attempt: 0 },
        (L::InitFailed { .. }, _) => L::Done(Outcome::Failed),
        (L::Failed { .. }, _) => L::Done(Outcome::Failed),
        // Any other event in a state that does not expect it: the state stays.
        (state, event) => {
            warn!(?state, ?event, "event ignored in this container state");
            state
        }
    }
}

/// Drives one container from `state` until it is done. `lock` is the pod's
/// lifecycle lock, held from create through start so that a stop never races a
/// start into a leaked container.
pub async fn drive<R: ContainerRuntime, L: Ledger>(
    runtime: &R,
    ledger: &L,
    rules: &Rules,
    lock: Arc<tokio::sync::Mutex<()>>,
    mut state: Lifecycle,
    mut counters: Counters,
    mut run: u32,
) -> Outcome {
    let name = rules.name.as_str();
    let mut guard = None;
    loop {
        let event = match &state {
            Lifecycle::Done(outcome) => return *outcome,
            Lifecycle::Pulling { .. } if ledger.stopping() => Event::Stop,
            Lifecycle::Pulling { attempt } => match runtime.pull().await {
                Ok(image) => Event::Pulled(image),
                Err(e) => {
                    let never = matches!(e, RuntimeError::ImageNeverPull { .. });
                    warn!(container = name, attempt = attempt + 1, error = %e, "image pull failed");
                    Event::PullError {
                        never,
                        message: e.to_string(),
                    }
                }
            },
            Lifecycle::PullFailed { backoff, .. } => {
                // ErrImagePull is reported first, then the back-off, as by the kubelet.
                tokio::time::sleep(*backoff / 4).await;
                Event::Elapsed
            }
            Lifecycle::PullBackOff { remaining, .. }
            | Lifecycle::StartFailed {
                backoff: remaining, ..
            }
            | Lifecycle::BackingOff {
                delay: remaining, ..
            } => {
                guard = None;
                tokio::time::sleep(*remaining).await;
                if ledger.stopping() {
                    Event::Stop
                } else {
                    Event::Elapsed
                }
            }
            Lifecycle::Creating { .. } | Lifecycle::Created if guard.is_none() => {
                let held = lock.clone().lock_owned().await;
                if ledger.stopping() {
                    Event::Stop
                } else {
                    guard = Some(held);
                    continue;
                }
            }
            Lifecycle::Creating { image } => match runtime.create(image).await {
                Ok(()) => Event::Created,
                Err(e) => {
                    warn!(container = name, error = %e, "container not created");
                    Event::CreateError(e.to_string())
                }
            },
            Lifecycle::Created => match runtime.start(run).await {
                Err(e) => {
                    warn!(container = name, error = %e, "container not started");
                    Event::StartError(e.to_string())
                }
                Ok(()) => {
                    let at = jiff::Timestamp::now();
                    // Report only what containerd says now: the task may already have exited.
                    let running = match runtime.observe().await {
                        Ok(Some(o)) if o.status == TaskStatus::Running => true,
                        other => {
                            info!(container = name, observed = ?other, "task not running right after start");
                            false
                        }
                    };
                    info!(container = name, run, "container started");
                    guard = None;
                    Event::Started { at, running }
                }
            },
            Lifecycle::Running { .. } => {
                guard = None;
                let (stop_probes, probes_stopped) = watch::channel(false);
                let waited = async {
                    let waited = runtime.wait().await;
                    let _ = stop_probes.send(true);
                    waited
                };
                let (waited, probe_failure) = tokio::join!(waited, runtime.probe(probes_stopped));
                match waited {
                    Ok(exit) => {
                        info!(
                            container = name,
                            exit_code = exit.code,
                            oom = exit.oom,
                            "container exited"
                        );
                        Event::Exited {
                            finished: exit.finished_at.unwrap_or_else(jiff::Timestamp::now),
                            exit,
                            probe_failure,
                        }
                    }
                    Err(e) => {
                        warn!(container = name, error = %e, "lost track of task");
                        Event::Lost(e.to_string())
                    }
                }
            }
            Lifecycle::Terminated { .. } if ledger.stopping() => Event::Stop,
            Lifecycle::Terminated { .. }
            | Lifecycle::Restarting
            | Lifecycle::InitFailed { .. }
            | Lifecycle::Failed { .. } => Event::Elapsed,
        };
        state = next(state, &mut counters, event, rules);
        if matches!(state, Lifecycle::Restarting) {
            run += 1;
        }
        ledger.record(&state);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn image() -> ImageInfo {
        ImageInfo {
            name: "docker.io/library/busybox:1".into(),
            digest: "sha256:abc".into(),
            config: Default::default(),
            chain_id: "sha256:def".into(),
        }
    }

    fn pull_error() -> RuntimeError {
        RuntimeError::ImagePull {
            reference: "busybox:1".into(),
            message: "not found".into(),
        }
    }

    /// A runtime whose calls answer from scripts (success once a script is empty).
    #[derive(Default)]
    struct Fake {
        pulls: Mutex<VecDeque<Result<ImageInfo, RuntimeError>>>,
        starts: Mutex<VecDeque<Result<(), RuntimeError>>>,
        /// Per run: how long it runs and how it exits.
        runs: Mutex<VecDeque<(Duration, Exit)>>,
        calls: Mutex<Vec<String>>,
    }

    impl Fake {
        fn runs(runs: impl IntoIterator<Item = (u64, i32)>) -> Self {
            let fake = Self::default();
            *fake.runs.lock().unwrap() = runs
                .into_iter()
                .map(|(secs, code)| {
                    let exit = Exit {
                        code,
                        finished_at: None,
                        oom: false,
                    };
                    (Duration::from_secs(secs), exit)
                })
                .collect();
            fake
        }
        fn called(&self, what: String) {
            self.calls.lock().unwrap().push(what);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ContainerRuntime for Fake {
        async fn pull(&self) -> Result<ImageInfo, RuntimeError> {
            self.called("pull".into());
            self.pulls
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(image()))
        }
        async fn create(&self, _: &ImageInfo) -> Result<(), PodError> {
            self.called("create".into());
            Ok(())
        }
        async fn start(&self, run: u32) -> Result<(), RuntimeError> {
            self.called(format!("start {run}"));
            self.starts.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
        async fn observe(&self) -> Result<Option<TaskObservation>, RuntimeError> {
            Ok(Some(TaskObservation {
                status: TaskStatus::Running,
                pid: 1,
                exit_status: 0,
                exited_at: None,
            }))
        }
        async fn wait(&self) -> Result<Exit, RuntimeError> {
            let next = self.runs.lock().unwrap().pop_front();
            let Some((ran, mut exit)) = next else {
                // Runs until the test ends.
                return std::future::pending().await;
            };
            tokio::time::sleep(ran).await;
            exit.finished_at = Some(jiff::Timestamp::now() + ran);
            self.called(format!("exit {}", exit.code));
            Ok(exit)
        }
        async fn probe(&self, _: watch::Receiver<bool>) -> Option<String> {
            None
        }
    }

    /// Records states with the tokio time they were entered at; stops when
    /// `stop_at` says so.
    struct Record {
        began: tokio::time::Instant,
        states: Mutex<Vec<(Duration, Lifecycle)>>,
        stop: AtomicBool,
        stop_when: Box<dyn Fn(&Lifecycle) -> bool + Send + Sync>,
    }

    impl Record {
        fn new() -> Self {
            Self::stopping_when(|_| false)
        }
        fn stopping_when(f: impl Fn(&Lifecycle) -> bool + Send + Sync + 'static) -> Self {
            Self {
                began: tokio::time::Instant::now(),
                states: Mutex::default(),
                stop: AtomicBool::new(false),
                stop_when: Box::new(f),
            }
        }
        /// The reported container states: (seconds since start, reason or "Running").
        fn reported(&self) -> Vec<(u64, String)> {
            self.states
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(at, s)| {
                    let shown = match s.container_state("busybox:1", "main")? {
                        ContainerState::Waiting { reason, .. } => reason,
                        ContainerState::Running { .. } => "Running".into(),
                        ContainerState::Terminated {
                            reason, exit_code, ..
                        } => format!("{reason}({exit_code})"),
                    };
                    Some((at.as_secs(), shown))
                })
                .collect()
        }
        fn restarts(&self) -> usize {
            let states = self.states.lock().unwrap();
            states
                .iter()
                .filter(|(_, s)| matches!(s, Lifecycle::Restarting))
                .count()
        }
        fn delays(&self) -> Vec<u64> {
            let states = self.states.lock().unwrap();
            states
                .iter()
                .filter_map(|(_, s)| match s {
                    Lifecycle::BackingOff { delay, .. } => Some(delay.as_secs()),
                    _ => None,
                })
                .collect()
        }
    }

    impl Ledger for Record {
        fn record(&self, state: &Lifecycle) {
            if (self.stop_when)(state) {
                self.stop.store(true, Ordering::SeqCst);
            }
            let at = self.began.elapsed();
            self.states.lock().unwrap().push((at, state.clone()));
        }
        fn stopping(&self) -> bool {
            self.stop.load(Ordering::SeqCst)
        }
    }

    fn rules(policy: RestartPolicy) -> Rules {
        Rules {
            policy,
            init: false,
            timings: Timings::default(),
            name: "main".into(),
        }
    }

    async fn run(fake: &Fake, record: &Record, rules: &Rules) -> Outcome {
        drive(
            fake,
            record,
            rules,
            Arc::default(),
            Lifecycle::Pulling { attempt: 0 },
            Counters::default(),
            0,
        )
        .await
    }

    fn at(v: &[(u64, &str)]) -> Vec<(u64, String)> {
        v.iter().map(|(t, s)| (*t, (*s).to_owned())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_runs_and_a_clean_exit_completes_under_never_and_on_failure() {
        for policy in [RestartPolicy::Never, RestartPolicy::OnFailure] {
            let fake = Fake::runs([(5, 0)]);
            let record = Record::new();
            assert_eq!(
                run(&fake, &record, &rules(policy)).await,
                Outcome::Completed
            );
            assert_eq!(
                record.reported(),
                at(&[(0, "Running"), (5, "Completed(0)")])
            );
            assert_eq!(fake.calls(), ["pull", "create", "start 0", "exit 0"]);
            assert_eq!(record.restarts(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_under_never_fails_with_its_exit_code() {
        let fake = Fake::runs([(1, 3)]);
        let record = Record::new();
        let outcome = run(&fake, &record, &rules(RestartPolicy::Never)).await;
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(record.reported(), at(&[(0, "Running"), (1, "Error(3)")]));
    }

    #[tokio::test(start_paused = true)]
    async fn on_failure_backs_off_doubling_to_the_cap_then_completes() {
        // Eight crashes one second in, then a clean exit.
        let mut runs: Vec<(u64, i32)> = vec![(1, 1); 8];
        runs.push((1, 0));
        let fake = Fake::runs(runs);
        let record = Record::new();
        let outcome = run(&fake, &record, &rules(RestartPolicy::OnFailure)).await;
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(record.delays(), [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(record.restarts(), 8, "the restart count");
        let reported = record.reported();
        assert_eq!(
            &reported[..6],
            at(&[
                (0, "Running"),
                (1, "Error(1)"),
                (1, "CrashLoopBackOff"),
                (11, "Running"),
                (12, "Error(1)"),
                (12, "CrashLoopBackOff"),
            ])
            .as_slice()
        );
        assert_eq!(reported.last().unwrap().1, "Completed(0)");
        // Every run starts with its own number (its log file).
        let starts: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("start"))
            .collect();
        assert_eq!(starts.len(), 9);
        assert_eq!(starts.last().unwrap(), "start 8");
        assert_eq!(
            fake.calls().iter().filter(|c| *c == "create").count(),
            1,
            "created once, restarted as new tasks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn always_restarts_clean_exits_and_a_long_run_resets_the_back_off() {
        // Three quick exits (10, 20, 40 s back-off), a run of 10 min (reset to
        // 10 s), then one more quick exit (20 s).
        let fake = Fake::runs([(1, 0), (1, 0), (1, 0), (600, 0), (1, 0)]);
        let record = Record::new();
        let rules = rules(RestartPolicy::Always);
        let outcome =
            tokio::time::timeout(Duration::from_secs(3600), run(&fake, &record, &rules)).await;
        assert!(outcome.is_err(), "runs on (the sixth run never exits)");
        assert_eq!(record.delays(), [10, 20, 40, 10, 20]);
        assert_eq!(record.restarts(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_backing_off_ends_it_without_a_restart() {
        let fake = Fake::runs([(1, 1)]);
        let record = Record::stopping_when(|s| matches!(s, Lifecycle::BackingOff { .. }));
        let outcome = run(&fake, &record, &rules(RestartPolicy::Always)).await;
        assert_eq!(outcome, Outcome::Stopped);
        assert_eq!(record.restarts(), 0, "the restart count is not raised");
        assert_eq!(
            record.reported(),
            at(&[(0, "Running"), (1, "Error(1)"), (1, "CrashLoopBackOff")])
        );
        assert_eq!(fake.calls(), ["pull", "create", "start 0", "exit 1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn pull_failures_report_err_image_pull_then_back_off_and_finally_fail() {
        let fake = Fake::default();
        *fake.pulls.lock().unwrap() = (0..5).map(|_| Err(pull_error())).collect();
        let record = Record::new();
        let outcome = run(&fake, &record, &rules(RestartPolicy::Always)).await;
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(
            record.reported(),
            at(&[
                (0, "ErrImagePull"),
                (2, "ImagePullBackOff"),
                (10, "ErrImagePull"),
                (15, "ImagePullBackOff"),
                (30, "ErrImagePull"),
                (40, "ImagePullBackOff"),
                (70, "ErrImagePull"),
                (90, "ImagePullBackOff"),
                (150, "ErrImagePull"),
            ])
        );
        let last = record.states.lock().unwrap().last().unwrap().1.clone();
        assert_eq!(last, Lifecycle::Done(Outcome::Failed));
        assert_eq!(fake.calls().iter().filter(|c| *c == "pull").count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pull_that_recovers_runs_and_never_pull_fails_at_once() {
        let fake = Fake::runs([(1, 0)]);
        *fake.pulls.lock().unwrap() = [Err(pull_error())].into();
        let record = Record::new();
        let outcome = run(&fake, &record, &rules(RestartPolicy::Never)).await;
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(
            record.reported(),
            at(&[
                (0, "ErrImagePull"),
                (2, "ImagePullBackOff"),
                (10, "Running"),
                (11, "Completed(0)")
            ])
        );

        let fake = Fake::default();
        *fake.pulls.lock().unwrap() = [Err(RuntimeError::ImageNeverPull {
            reference: "busybox:1".into(),
        })]
        .into();
        let record = Record::new();
        let outcome = run(&fake, &record, &rules(RestartPolicy::Always)).await;
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(record.reported(), at(&[(0, "ErrImageNeverPull")]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_pull_back_off_ends_it() {
        let fake = Fake::default();
        *fake.pulls.lock().unwrap() = [Err(pull_error())].into();
        let record = Record::stopping_when(|s| matches!(s, Lifecycle::PullBackOff { .. }));
        let outcome = run(&fake, &record, &rules(RestartPolicy::Always)).await;
        assert_eq!(outcome, Outcome::Stopped);
        assert_eq!(fake.calls(), ["pull"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_cannot_start_is_retried_from_the_pull_then_fails() {
        let fake = Fake::runs([(1, 0)]);
        *fake.starts.lock().unwrap() = [Err(RuntimeError::ImagePull {
            reference: "x".into(),
            message: "no".into(),
        })]
        .into();
        let record = Record::new();
        let outcome = run(&fake, &record, &rules(RestartPolicy::Never)).await;
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(
            record.reported(),
            at(&[
                (0, "RunContainerError"),
                (10, "Running"),
                (11, "Completed(0)")
            ])
        );
        assert_eq!(
            fake.calls(),
            ["pull", "create", "start 0", "pull", "start 0", "exit 0"]
        );

        let fake = Fake::default();
        *fake.starts.lock().unwrap() = (0..5)
            .map(|_| {
                Err(RuntimeError::BadImage {
                    reference: "x".into(),
                    reason: "no".into(),
                })
            })
            .collect();
        let record = Record::new();
        assert_eq!(
            run(&fake, &record, &rules(RestartPolicy::Always)).await,
            Outcome::Failed
        );
        let reported = record.reported();
        assert_eq!(reported.last().unwrap().1, "RunContainerError");
        assert_eq!(reported.len(), 5, "four retries, then the failure");
    }

    #[tokio::test(start_paused = true)]
    async fn init_containers_complete_on_zero_and_fail_the_pod_otherwise() {
        let init = Rules {
            init: true,
            ..rules(RestartPolicy::Always)
        };
        let fake = Fake::runs([(1, 0)]);
        let record = Record::new();
        assert_eq!(run(&fake, &record, &init).await, Outcome::Completed);

        let never = Rules {
            init: true,
            ..rules(RestartPolicy::Never)
        };
        let fake = Fake::runs([(1, 2)]);
        let record = Record::new();
        assert_eq!(run(&fake, &record, &never).await, Outcome::Failed);
        let states = record.states.lock().unwrap();
        assert!(
            states.iter().any(|(_, s)| matches!(
                s,
                Lifecycle::InitFailed { message } if message == "init container main exited with 2"
            )),
            "{states:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_running_container_is_watched_not_restarted() {
        let fake = Fake::runs([(3, 0)]);
        let record = Record::new();
        let since = jiff::Timestamp::now();
        let outcome = drive(
            &fake,
            &record,
            &rules(RestartPolicy::Never),
            Arc::default(),
            Lifecycle::Running {
                since,
                confirmed: false,
            },
            Counters {
                created: true,
                ..Default::default()
            },
            2,
        )
        .await;
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(fake.calls(), ["exit 0"]);
        assert_eq!(record.reported(), at(&[(3, "Completed(0)")]));
    }

    #[test]
    fn an_oom_kill_and_a_probe_failure_show_in_the_terminated_state() {
        let since = jiff::Timestamp::now();
        let mut counters = Counters::default();
        let rules = rules(RestartPolicy::Never);
        let running = || Lifecycle::Running {
            since,
            confirmed: true,
        };
        let exited = |oom, probe: Option<&str>| Event::Exited {
            exit: Exit {
                code: 137,
                finished_at: None,
                oom,
            },
            finished: since,
            probe_failure: probe.map(str::to_owned),
        };
        let Lifecycle::Terminated { state } =
            next(running(), &mut counters, exited(true, None), &rules)
        else {
            panic!("not terminated");
        };
        assert!(
            matches!(state, ContainerState::Terminated { reason, .. } if reason == "OOMKilled")
        );
        let Lifecycle::Terminated { state } = next(
            running(),
            &mut counters,
            exited(false, Some("liveness probe failed: x")),
            &rules,
        ) else {
            panic!("not terminated");
        };
        assert!(matches!(
            state,
            ContainerState::Terminated { reason, message, .. }
                if reason == "Error" && message == "liveness probe failed: x"
        ));
        // A stop wins in every state but the last.
        assert_eq!(
            next(running(), &mut counters, Event::Stop, &rules),
            Lifecycle::Done(Outcome::Stopped)
        );
    }
}
