//! Development certificates: `tollgate certs dev` makes a local certificate
//! authority and a server certificate for `localhost`, `127.0.0.1` and `::1` signed
//! by it, so that the HTTPS listener can be tried with clients that trust only that
//! CA (`SSL_CERT_FILE` for Python, `NODE_EXTRA_CA_CERTS` for Node).
//!
//! Private keys are written with owner-only permissions; existing files are only
//! replaced with `--force`.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// File names written into the target directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca-key.pem";
/// The server certificate (for `--tls-cert`).
pub const SERVER_CERT: &str = "server.pem";
/// The server's private key (for `--tls-key`).
pub const SERVER_KEY: &str = "server-key.pem";

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// Key or certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file already exists and `--force` was not given.
    #[error("{0} already exists; pass --force to replace it")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A generated CA and server certificate, PEM-encoded.
#[derive(Debug)]
pub struct DevCerts {
    /// The CA certificate, for clients to trust.
    pub ca_cert: String,
    /// The CA private key.
    pub ca_key: String,
    /// The server certificate.
    pub server_cert: String,
    /// The server private key.
    pub server_key: String,
}

/// Generates a fresh CA and a server certificate signed by it.
pub fn generate() -> Result<DevCerts, CertsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "tollgate development CA");
    ca_name.push(DnType::OrganizationName, "tollgate");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "localhost");
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_cert = params.signed_by(&server_key, &issuer)?;

    Ok(DevCerts {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
    })
}

/// Generates certificates and writes them into `dir` (created if needed). Returns
/// the paths written.
pub fn write_dev(dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertsError> {
    let files = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY].map(|name| dir.join(name));
    if let Some(existing) = files.iter().find(|p| !force && p.exists()) {
        return Err(CertsError::Exists(existing.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let certs = generate()?;
    let contents = [
        (&certs.ca_cert, false),
        (&certs.ca_key, true),
        (&certs.server_cert, false),
        (&certs.server_key, true),
    ];
    for (path, (text, secret)) in files.iter().zip(contents) {
        write_file(path, text.as_bytes(), secret).map_err(|source| CertsError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(files.to_vec())
}

/// Writes a file; secret files get mode 0600 from the moment they exist.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_four_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_dev(dir.path(), false).unwrap();
        assert_eq!(written.len(), 4);
        for path in &written {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SERVER_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            write_dev(dir.path(), false),
            Err(CertsError::Exists(_))
        ));
        assert!(write_dev(dir.path(), true).is_ok());
    }
}
