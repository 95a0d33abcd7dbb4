//! Permissions of the server's secret files: the database is created mode
//! 0600 (and an existing one with wider permissions is narrowed, with a
//! warning); the master secret must not be readable by group or others.

use std::io;
use std::path::Path;

/// Creates the database file with mode 0600 when it does not exist (redb
/// then initialises the empty file), or narrows an existing one to 0600
/// when group or others may access it; the same for its sync journal
/// ([`crate::store::redb::journal::journal_path`]), which holds the same
/// rows.
pub fn prepare_db(path: &Path) -> io::Result<()> {
    prepare_private(path)?;
    prepare_private(&crate::store::redb::journal::journal_path(path))
}

fn prepare_private(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the database (or its journal) was accessible to group or others; setting mode 0600"
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Fails when the master secret file at `path` may be read (or written) by
/// group or others: every device key derives from it.
pub fn check_secret(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "mode {mode:o} lets group or others access it; every device key \
                     derives from it: run `chmod 600 {}` (and consider it leaked)",
                    path.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
