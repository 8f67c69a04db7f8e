//! `orca-logger`: the log binary containerd's shim starts for each ORCA task
//! (`binary:///path/orca-logger?log=FILE&max-size=BYTES&max-files=N`). The shim
//! passes the query as `key value` argument pairs.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, rotation) = match orca_agent::logs::logger_args(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!(
                "orca-logger: {e}; usage: orca-logger log FILE [max-size BYTES] [max-files N] (started by containerd's shim with fds 3, 4 and 5)"
            );
            return std::process::ExitCode::from(2);
        }
    };
    match orca_agent::logs::run_logger(&path, rotation) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orca-logger: {}: {e}", path.display());
            std::process::ExitCode::FAILURE
        }
    }
}
