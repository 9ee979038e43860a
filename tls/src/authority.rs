//! # authority: the cluster CA and the certificates it issues
//!
//! Owns certificate generation (rcgen, ECDSA P-256): a self-signed cluster CA, and end-entity
//! certificates for nodes, control replicas and operators named as [`crate::identity`] says,
//! usable both as TLS servers and clients. Files: `ca.pem` and `ca.key` for the CA,
//! `<role>-<name>.pem` and `<role>-<name>.key` for what it issues; keys are written `0600`.
//!
//! Must never overwrite a file unless asked to (`force`), and never write a key readable by
//! others.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;
use crate::identity::{CONTROL_SERVER_NAME, Identity, NODE_SERVER_NAME, Role};

/// How long an issued certificate is valid by default (days).
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;
/// How long the CA is valid (days).
pub const CA_VALIDITY_DAYS: u32 = 3650;

/// A cluster CA: its certificate and its signing key.
pub struct Authority {
    cert_pem: String,
    key: KeyPair,
}

/// A certificate and its key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    pub identity: Identity,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where [`Authority::write_issued`] put a certificate.
#[derive(Clone, Debug)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

impl Authority {
    /// A new CA named `cluster_name`.
    pub fn generate(cluster_name: &str) -> Result<Authority, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!("Herald cluster CA {cluster_name}"),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA in `dir` (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Authority, Error> {
        let cert_pem = read(&dir.join("ca.pem"))?;
        let key_path = dir.join("ca.key");
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| Error::Pem {
            path: key_path,
            reason: e.to_string(),
        })?;
        Ok(Authority { cert_pem, key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca.key` into `dir` (created if missing).
    pub fn write(&self, dir: &Path, force: bool) -> Result<PathBuf, Error> {
        create_dir(dir)?;
        let cert = dir.join("ca.pem");
        write_file(&cert, self.cert_pem.as_bytes(), false, force)?;
        write_file(
            &dir.join("ca.key"),
            self.key.serialize_pem().as_bytes(),
            true,
            force,
        )?;
        Ok(cert)
    }

    /// Issues a certificate for `identity`, valid `days`, with `extra_names` (DNS names or IP
    /// addresses) beside the identity's own name.
    pub fn issue(
        &self,
        identity: &Identity,
        extra_names: &[String],
        days: u32,
    ) -> Result<Issued, Error> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let key = KeyPair::generate()?;
        let mut names = vec![identity.name.clone()];
        match identity.role {
            Role::Control => names.push(CONTROL_SERVER_NAME.to_owned()),
            Role::Node => names.push(NODE_SERVER_NAME.to_owned()),
            Role::Operator => {}
        }
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::URI(identity.uri().try_into()?));
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            identity: identity.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `issued` into `dir` as `<role>-<name>.pem` and `.key`.
    pub fn write_issued(dir: &Path, issued: &Issued, force: bool) -> Result<IssuedFiles, Error> {
        create_dir(dir)?;
        let stem = format!("{}-{}", issued.identity.role, issued.identity.name);
        let files = IssuedFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        write_file(&files.cert, issued.cert_pem.as_bytes(), false, force)?;
        write_file(&files.key, issued.key_pem.as_bytes(), true, force)?;
        Ok(files)
    }
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` (through a temporary file and a rename, so a process watching
/// the file never reads half of it).
fn write_file(path: &Path, bytes: &[u8], secret: bool, force: bool) -> Result<(), Error> {
    if !force && path.exists() {
        return Err(Error::Exists {
            path: path.to_owned(),
        });
    }
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn issued_certificates_carry_their_identity() {
        let ca = Authority::generate("test").expect("ca");
        let id = Identity::new(Role::Node, "n1").expect("id");
        let issued = ca
            .issue(&id, &["127.0.0.1".into()], DEFAULT_VALIDITY_DAYS)
            .expect("issue");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        assert_eq!(Identity::from_certificate(&der), Some(id));
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("ca pem");
        assert_eq!(
            Identity::from_certificate(&ca_der),
            None,
            "the CA is nobody"
        );
    }

    #[test]
    fn files_round_trip_and_are_not_overwritten() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Authority::generate("test").expect("ca");
        ca.write(dir.path(), false).expect("write");
        assert!(matches!(
            ca.write(dir.path(), false),
            Err(Error::Exists { .. })
        ));
        let loaded = Authority::load(dir.path()).expect("load");
        let id = Identity::new(Role::Operator, "alice").expect("id");
        let issued = loaded.issue(&id, &[], 1).expect("issue");
        let files = Authority::write_issued(dir.path(), &issued, false).expect("files");
        assert!(files.cert.ends_with("operator-alice.pem"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key)
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(dir.path().join("ca.key"))
                .expect("ca key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
