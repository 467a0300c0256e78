//! Ed25519 key files: PKCS#8 PEM for signing keys (written owner-only), SPKI PEM
//! for public keys, so that other tools (openssl among them) read them too.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a usable key.
    #[error("{path}: not an Ed25519 key in PEM ({message})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The file exists and `--force` was not given.
    #[error("{0} already exists; pass --force to replace it")]
    Exists(PathBuf),
    /// No randomness available.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// A new random signing key.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to `path` as PKCS#8 PEM with mode 0600.
pub fn write_signing(path: &Path, key: &SigningKey, force: bool) -> Result<(), KeyError> {
    if path.exists() && !force {
        return Err(KeyError::Exists(path.to_path_buf()));
    }
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(pem.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a signing key.
pub fn read_signing(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads a public key: an SPKI public-key PEM, or the public half of a signing
/// key PEM.
pub fn read_verifying(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&text)
        .or_else(|_| SigningKey::from_pkcs8_pem(&text).map(|k| k.verifying_key()))
        .map_err(|e| KeyError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The signing key to use: the configured file, which must exist (a missing or
/// unreadable configured key is an error, never a silent new key); or, with none
/// configured, `default`, created with a fresh key on first use. Returns the key
/// and whether it was created.
pub fn load_or_create(
    configured: Option<&Path>,
    default: &Path,
) -> Result<(SigningKey, bool), KeyError> {
    match configured {
        Some(path) => Ok((read_signing(path)?, false)),
        None if default.exists() => Ok((read_signing(default)?, false)),
        None => {
            let key = generate()?;
            write_signing(default, &key, false)?;
            Ok((key, true))
        }
    }
}

/// The SPKI PEM of a public key.
pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_key_must_exist_and_a_default_one_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            load_or_create(Some(&missing), &missing),
            Err(KeyError::Io { .. })
        ));
        assert!(!missing.exists(), "a configured key is never created");
        let default = dir.path().join("data/signing-key.pem");
        let (first, created) = load_or_create(None, &default).unwrap();
        assert!(created);
        let (again, created) = load_or_create(None, &default).unwrap();
        assert!(!created);
        assert_eq!(first.to_bytes(), again.to_bytes());
        std::fs::write(&missing, "garbage").unwrap();
        assert!(matches!(
            load_or_create(Some(&missing), &default),
            Err(KeyError::Format { .. })
        ));
    }

    #[test]
    fn keys_round_trip_through_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let key = generate().unwrap();
        write_signing(&path, &key, false).unwrap();
        assert!(matches!(
            write_signing(&path, &key, false),
            Err(KeyError::Exists(_))
        ));
        assert_eq!(read_signing(&path).unwrap().to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let public = dir.path().join("k.pub.pem");
        std::fs::write(&public, public_pem(&key.verifying_key())).unwrap();
        assert_eq!(read_verifying(&public).unwrap(), key.verifying_key());
        assert_eq!(read_verifying(&path).unwrap(), key.verifying_key());
        std::fs::write(&public, "not a key").unwrap();
        assert!(matches!(
            read_verifying(&public),
            Err(KeyError::Format { .. })
        ));
    }
}
