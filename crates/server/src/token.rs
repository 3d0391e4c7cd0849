//! The per-install token that endpoints changing consent, thresholds or exports require.
//!
//! 256 random bits from the operating system, hex-encoded, in `token` inside the data directory,
//! created owner-only (0600) the first time the service starts. The CLI reads the file; a web
//! page cannot. It is compared in constant time and never logged or put in a URL.

use std::io::Write;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// The file name inside the data directory.
pub const TOKEN_FILE: &str = "token";

/// The install's token.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Reading or creating the token file failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a kora-telemetry token (64 hex digits expected); remove it to make a new one"
    )]
    Malformed { path: PathBuf },
    #[error("{path}: readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("the operating system gave no random bytes: {0}")]
    Random(String),
}

impl Token {
    /// Reads the token in `dir`, creating it (0600) when there is none.
    pub fn load_or_create(dir: &Path) -> Result<Token, TokenError> {
        let path = dir.join(TOKEN_FILE);
        let io = |source| TokenError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        return Err(TokenError::TooOpen { path, mode });
                    }
                }
                let t = text.trim();
                if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Token(t.to_ascii_lowercase()))
                } else {
                    Err(TokenError::Malformed { path })
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
                let token = hex::encode(bytes);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(&path).map_err(io)?;
                file.write_all(token.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(Token(token))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = presented.trim().as_bytes();
        presented.len() == self.0.len() && bool::from(presented.ct_eq(self.0.as_bytes()))
    }

    /// The token's text, for the CLI to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_owner_only_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Token::load_or_create(dir.path()).unwrap();
        let b = Token::load_or_create(dir.path()).unwrap();
        assert!(a.matches(b.expose()));
        assert!(!a.matches(&"0".repeat(64)));
        assert!(!a.matches(""));
        assert_eq!(a.expose().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(
                dir.path().join(TOKEN_FILE),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            assert!(matches!(
                Token::load_or_create(dir.path()),
                Err(TokenError::TooOpen { .. })
            ));
        }
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
