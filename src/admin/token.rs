//! The admin token: `[admin] token` when set, else the token file (default
//! `<[store] path>/admin-token`), generated at the first start so that no install ever runs
//! with a well-known token.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use millgate_actors::Config;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured token, kept only as its SHA-256 digest so that comparisons take the same time
/// whatever the token's length and content.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Constant-time: both sides are hashed first, so a length mismatch returns no earlier.
    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(given.as_slice().ct_eq(self.digest.as_slice()))
    }
}

/// Random bytes in a generated token.
const TOKEN_BYTES: usize = 32;

/// The admin token of `config` (which has an `[admin]` table): `token`, or the token file's
/// content, generating the file when it does not exist. Errors name the file.
pub fn resolve(config: &Config) -> Result<String, String> {
    let Some(admin) = &config.admin else {
        return Err("no [admin] table".into());
    };
    if let Some(t) = &admin.token {
        return Ok(t.trim().to_string());
    }
    let path = admin.token_file(&config.store);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(format!(
                    "admin token file {} is empty: delete it to have a new token generated \
                     (`[admin] token_file`)",
                    path.display()
                ));
            }
            warn_if_shared(&path);
            tracing::debug!(path = %path.display(), "admin token read");
            Ok(token.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate(&path).map_err(|e| {
                format!(
                    "cannot write the admin token file {}: {e} (`[admin] token_file`)",
                    path.display()
                )
            })?;
            tracing::warn!("admin token generated: {}", path.display());
            Ok(token)
        }
        Err(e) => Err(format!(
            "cannot read the admin token file {}: {e} (`[admin] token_file`)",
            path.display()
        )),
    }
}

/// The token file is a credential: say so when other users can read it.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "admin token file {} can be read by other users (mode {mode:o}); `chmod 600` it",
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Writes a new random token to `path`, readable by its owner only. Written beside it and
/// renamed into place, so a crash never leaves a partial token behind.
fn generate(path: &Path) -> std::io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = PathBuf::from(format!("{}.tmp-{}", path.display(), std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare_is_exact() {
        let t = AdminToken::new("s3cret");
        assert!(t.matches("s3cret"));
        for other in ["", "s3cre", "s3cret ", "S3cret", "s3cret-and-more"] {
            assert!(!t.matches(other), "{other:?}");
        }
    }
}
