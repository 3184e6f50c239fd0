//! Who may read a file that holds a secret (a password, a private key):
//! PostgreSQL's rule for its own key files.

use std::path::Path;

/// What is wrong with who may read `path`, the file of config key `key`,
/// or `None` when only its owner may (0600), or root owns it and only a
/// group may also read it (0640 root:walhook).
#[cfg(unix)]
pub fn exposure(path: &Path, key: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o037 } else { 0o077 };
    (mode & allowed != 0).then(|| {
        format!(
            "key {key}: {} is readable by {} (mode {mode:04o}): chmod 600 it (owned by the \
             user walhook runs as), or chown root:walhook and chmod 640",
            path.display(),
            if mode & 0o007 != 0 {
                "every user"
            } else {
                "its group"
            },
        )
    })
}

#[cfg(not(unix))]
pub fn exposure(_path: &Path, _key: &str) -> Option<String> {
    None
}
