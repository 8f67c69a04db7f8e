//! Poll until something holds, or fail with the last error: the only way tests wait.
//!
//! Each helper calls its closure at once, then every [`DEFAULT_EVERY`] (or the given
//! interval) until it returns `Ok`, and gives up once `within` has passed, after one
//! last attempt at the deadline. On timeout the error names what was awaited, for how
//! long, how many attempts were made, and the `Debug` of the last error.
//!
//! - [`eventually`] / [`eventually_blocking`] panic on timeout (for test bodies).
//! - [`try_eventually`] / [`try_eventually_blocking`] return [`Timeout`] instead (for
//!   library code that reports its own errors).

use std::fmt::{self, Debug};
use std::future::Future;
use std::time::{Duration, Instant};

/// The default polling interval: short enough that tests do not wait for nothing,
/// long enough not to load a 2-core machine with probes.
pub const DEFAULT_EVERY: Duration = Duration::from_millis(50);

/// What was awaited did not happen in time.
#[derive(Debug)]
pub struct Timeout<E> {
    /// What was awaited, as the caller described it.
    pub what: String,
    /// How long the caller was willing to wait.
    pub within: Duration,
    /// How many attempts finished.
    pub attempts: u32,
    /// The error of the last finished attempt.
    pub last: Option<E>,
}

impl<E: Debug> fmt::Display for Timeout<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {} ({} attempts); last error: ",
            self.within, self.what, self.attempts
        )?;
        match &self.last {
            Some(e) => write!(f, "{e:?}"),
            None => f.write_str("none (the only attempt was still running)"),
        }
    }
}

impl<E: Debug> std::error::Error for Timeout<E> {}

/// Polls the async `f` every [`DEFAULT_EVERY`] until it returns `Ok`, and returns that value.
///
/// # Panics
///
/// When `within` passes first, with the [`Timeout`] message (`what` and the last error's `Debug`).
pub async fn eventually<T, E: Debug, F, Fut>(what: &str, within: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    eventually_every(what, within, DEFAULT_EVERY, f).await
}

/// [`eventually`] with a polling interval of `every`.
///
/// # Panics
///
/// When `within` passes first.
pub async fn eventually_every<T, E: Debug, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match try_eventually(what, within, every, f).await {
        Ok(v) => v,
        Err(timeout) => panic!("{timeout}"),
    }
}

/// Polls the async `f` every `every` until it returns `Ok`; [`Timeout`] once `within` passes.
///
/// An attempt still running at the deadline is abandoned (dropped), so a hung probe
/// cannot hang the test.
pub async fn try_eventually<T, E: Debug, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut f: F,
) -> Result<T, Timeout<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut attempts = 0;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => {
                attempts += 1;
                last = Some(e);
            }
            Err(_elapsed) => break,
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(every.min(deadline - now)).await;
    }
    Err(Timeout {
        what: what.to_owned(),
        within,
        attempts,
        last,
    })
}

/// Blocking twin of [`eventually`], for sync code (and daemon start-up).
///
/// # Panics
///
/// When `within` passes first, with the [`Timeout`] message.
pub fn eventually_blocking<T, E: Debug, F>(what: &str, within: Duration, f: F) -> T
where
    F: FnMut() -> Result<T, E>,
{
    match try_eventually_blocking(what, within, DEFAULT_EVERY, f) {
        Ok(v) => v,
        Err(timeout) => panic!("{timeout}"),
    }
}

/// Blocking twin of [`try_eventually`]. An attempt is never interrupted: the deadline
/// is checked between attempts, so a probe should carry its own timeout.
pub fn try_eventually_blocking<T, E: Debug, F>(
    what: &str,
    within: Duration,
    every: Duration,
    mut f: F,
) -> Result<T, Timeout<E>>
where
    F: FnMut() -> Result<T, E>,
{
    let deadline = Instant::now() + within;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Timeout {
                what: what.to_owned(),
                within,
                attempts,
                last: Some(last),
            });
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_returns_first_ok() {
        let mut n = 0;
        let v = eventually_blocking("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            if n >= 3 { Ok(n) } else { Err(n) }
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn blocking_timeout_names_what_and_last_error() {
        let err = try_eventually_blocking(
            "the impossible",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Err::<(), _>("still no"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("the impossible"), "{msg}");
        assert!(msg.contains("\"still no\""), "{msg}");
        assert!(err.attempts >= 2, "{msg}");
    }

    #[tokio::test(start_paused = true)]
    async fn async_returns_first_ok_and_times_out() {
        let mut n = 0;
        let v = eventually("n reaches 4", Duration::from_secs(5), || {
            n += 1;
            let r = if n >= 4 { Ok(n) } else { Err(n) };
            async move { r }
        })
        .await;
        assert_eq!(v, 4);

        let err = try_eventually(
            "never",
            Duration::from_secs(1),
            Duration::from_millis(100),
            || async { Err::<(), _>(7) },
        )
        .await
        .unwrap_err();
        assert_eq!(err.last, Some(7));
        assert!(err.attempts >= 10, "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn async_abandons_a_hung_attempt() {
        let err = try_eventually("hang", Duration::from_secs(1), DEFAULT_EVERY, || {
            std::future::pending::<Result<(), ()>>()
        })
        .await
        .unwrap_err();
        assert_eq!(err.attempts, 0);
        assert!(err.to_string().contains("still running"), "{err}");
    }

    #[test]
    #[should_panic(expected = "waiting for a panic")]
    fn blocking_panics_on_timeout() {
        eventually_blocking("a panic", Duration::from_millis(10), || Err::<(), _>(()));
    }
}
