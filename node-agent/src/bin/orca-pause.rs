//! `orca-pause HOSTNAME`: holds a pod's shared IPC and UTS namespaces, as the
//! kubelet's pause container does. It enters new IPC and UTS namespaces, sets the
//! pod's hostname, prints `ready`, and sleeps until it is killed; the pod's
//! containers join `/proc/<its pid>/ns/{ipc,uts,net}` (the network namespace is
//! the agent's, inherited, not a new one).

use std::io::Write as _;

use nix::sched::{CloneFlags, unshare};

fn main() -> std::process::ExitCode {
    let Some(hostname) = std::env::args().nth(1) else {
        eprintln!("usage: orca-pause HOSTNAME");
        return std::process::ExitCode::from(2);
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS) {
        eprintln!("orca-pause: unshare: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(e) = nix::unistd::sethostname(&hostname) {
        eprintln!("orca-pause: sethostname {hostname:?}: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let mut out = std::io::stdout();
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    loop {
        std::thread::park();
    }
}
