//! The final status of an exec or attach, as the kubelet writes it on the
//! error stream/channel: protocol v4 and later a `metav1.Status` in JSON
//! (also on success), earlier versions the message as plain text, and
//! nothing on success.
//!
//! client-go (`errorDecoderV4`) reads a Failure with reason `NonZeroExitCode`
//! and an `ExitCode` cause whose message is the code (0 to 255) as the
//! command's exit code (kubectl exits with it); any other Failure is an
//! error with the status message.

use serde::Serialize;

use super::Outcome;

/// `metav1.Status` as the kubelet marshals it (Go field order, empty
/// fields omitted, `metadata` always present).
#[derive(Debug, Serialize)]
struct Status {
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

#[derive(Debug, Serialize)]
struct Empty {}

#[derive(Debug, Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Debug, Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

fn status(outcome: &Outcome) -> Status {
    match outcome {
        Outcome::Exited(0) => Status {
            metadata: Empty {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        },
        Outcome::Exited(code @ 1..=255) => Status {
            metadata: Empty {},
            status: "Failure",
            message: Some(format!(
                "command terminated with non-zero exit code: exit code {code}"
            )),
            reason: Some("NonZeroExitCode"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: Some("ExitCode"),
                    message: code.to_string(),
                }],
            }),
            code: None,
        },
        // client-go parses the ExitCode cause as a u8: report anything else
        // as an error rather than a code it would reject.
        Outcome::Exited(code) => internal(&format!("command terminated with exit code {code}")),
        Outcome::Error(message) => internal(message),
    }
}

/// `apierrors.NewInternalError("error executing command in container: ...")`.
fn internal(message: &str) -> Status {
    let cause = format!("error executing command in container: {message}");
    Status {
        metadata: Empty {},
        status: "Failure",
        message: Some(format!("Internal error occurred: {cause}")),
        reason: Some("InternalError"),
        details: Some(Details {
            causes: vec![Cause {
                reason: None,
                message: cause,
            }],
        }),
        code: Some(500),
    }
}

/// What to write on the error stream for `outcome` under protocol `version`;
/// `None` to write nothing (success before v4).
pub fn encode(version: u8, outcome: &Outcome) -> Option<Vec<u8>> {
    let status = status(outcome);
    if version >= 4 {
        // A struct of strings and integers always serializes.
        return serde_json::to_vec(&status).ok();
    }
    status.message.map(String::into_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(outcome: &Outcome) -> serde_json::Value {
        serde_json::from_slice(&encode(4, outcome).expect("v4 always writes")).expect("json")
    }

    #[test]
    fn success_is_the_kubelets_exact_bytes() {
        assert_eq!(
            encode(4, &Outcome::Exited(0)).as_deref(),
            Some(&br#"{"metadata":{},"status":"Success"}"#[..])
        );
        assert_eq!(encode(3, &Outcome::Exited(0)), None);
    }

    #[test]
    fn a_non_zero_exit_carries_the_exit_code_cause_client_go_parses() {
        let v = json(&Outcome::Exited(3));
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("command terminated with non-zero exit code"))
        );
        let text = encode(2, &Outcome::Exited(3)).expect("failure text");
        assert!(String::from_utf8_lossy(&text).contains("exit code 3"));
    }

    #[test]
    fn errors_are_internal_errors() {
        let v = json(&Outcome::Error("container not running".into()));
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["code"], 500);
        assert_eq!(
            v["message"],
            "Internal error occurred: error executing command in container: container not running"
        );
        let v = json(&Outcome::Exited(300));
        assert_eq!(
            v["reason"], "InternalError",
            "not a code client-go could parse"
        );
    }
}
