//! `orca backup FILE`: the control plane's backup (its CA and store, a gzip'd
//! tar; see [`crate::backup`]), verified, written to FILE or standard output.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use orca_proto::controlplane::v1 as pb;

use super::{Admin, CliError};
use orca_archive as archive;

/// Downloads a backup and writes it to `file` (`-`: standard output): through
/// a temporary file beside it (mode 0600: it holds the CA's key) renamed into
/// place once complete, so a failed backup leaves no truncated archive. The
/// summary goes to `out` (standard output), or to standard error when the
/// archive goes to `out`.
pub async fn backup(
    client: &mut Admin,
    file: &Path,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let mut stream = client.backup(pb::BackupRequest {}).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    let manifest = archive::read(bytes.as_slice())
        .map_err(CliError::Backup)?
        .manifest;
    let summary = format!(
        "backup of {} (orca {}): {} bytes; {}",
        manifest.created_at,
        manifest.orca_version,
        bytes.len(),
        manifest.summary()
    );
    if file == Path::new("-") {
        out.write_all(&bytes)?;
        out.flush()?;
        eprintln!("{summary}");
        return Ok(());
    }
    write_atomically(file, &bytes).map_err(|e| {
        CliError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", file.display()),
        ))
    })?;
    writeln!(out, "{summary}; written to {}", file.display())?;
    Ok(())
}

fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?
        .to_string_lossy();
    let partial: PathBuf = file.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&partial, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
