//! `orca-logger`: the log binary containerd's shim starts for each ORCA task
//! (`binary:///path/orca-logger?log=/path/to/file.log`). The shim passes its
//! query as arguments: `log <path>`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.as_slice() {
        [key, path] if key == "log" => std::path::PathBuf::from(path),
        _ => {
            eprintln!(
                "usage: orca-logger log <file> (started by containerd's shim with fds 3, 4 and 5)"
            );
            return std::process::ExitCode::from(2);
        }
    };
    match orca_agent::logs::run_logger(&path) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orca-logger: {}: {e}", path.display());
            std::process::ExitCode::FAILURE
        }
    }
}
