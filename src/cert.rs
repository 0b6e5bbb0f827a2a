//! The server certificate: loaded from files, or generated for local development.
//!
//! Browsers accept a self-signed certificate for WebTransport only when the page pins its
//! SHA-256 hash through `serverCertificateHashes`, and only when the certificate uses ECDSA
//! P-256 and its whole validity span stays under 14 days (Chromium 156 accepts exactly 14 days;
//! Firefox 153 rejects 14 days once a one-hour backdate is added). A generated certificate is
//! therefore backdated by one hour and valid for 13 days in total, reused while more than a day
//! of it is left and replaced otherwise.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// File name of the generated certificate inside the certificate directory.
pub const GENERATED_CERT: &str = "hubcast-cert.pem";
/// File name of the generated private key inside the certificate directory.
pub const GENERATED_KEY: &str = "hubcast-key.pem";

/// How far a generated certificate's notBefore lies in the past, to tolerate clock skew.
const BACKDATE: Duration = Duration::hours(1);
/// Whole span of a generated certificate, from notBefore to notAfter.
const SPAN: Duration = Duration::days(13);
/// A generated certificate with less time than this left is replaced at start-up.
const MIN_REMAINING: Duration = Duration::days(1);
/// Maximum span browsers accept for a hash-pinned certificate.
const MAX_PINNED_SPAN: Duration = Duration::days(14);

/// Certificate chain and key ready for rustls, with the leaf's SHA-256 hash.
pub struct Certificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 hash of the leaf certificate's DER encoding.
    pub sha256: [u8; 32],
    /// Whether hubcast generated this certificate, so pages must pin its hash.
    pub generated: bool,
    /// Files the certificate was read from or written to.
    pub cert_path: PathBuf,
}

/// Reason the certificate could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("no PEM certificate found in {path}")]
    NoCertificate { path: PathBuf },
    #[error("invalid PEM in {path}: {reason}")]
    InvalidPem { path: PathBuf, reason: String },
    #[error("failed to generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl Certificate {
    /// Loads a configured certificate chain and private key, used as they are.
    ///
    /// # Errors
    ///
    /// Returns [`CertError`] when a file cannot be read or holds no usable PEM item.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| CertError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::InvalidPem {
                path: cert_path.to_owned(),
                reason: e.to_string(),
            })?;
        let leaf = chain.first().ok_or_else(|| CertError::NoCertificate {
            path: cert_path.to_owned(),
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::InvalidPem {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            sha256: sha256(leaf),
            chain,
            key,
            generated: false,
            cert_path: cert_path.to_owned(),
        })
    }

    /// Reuses the generated certificate in `dir` while it stays valid for more than a day and
    /// fits the browsers' rules for pinned hashes; generates and stores a new one otherwise.
    ///
    /// # Errors
    ///
    /// Returns [`CertError`] when the directory cannot be written or generation fails.
    pub fn load_or_generate(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(GENERATED_CERT);
        let key_path = dir.join(GENERATED_KEY);
        if let Ok(existing) = Self::load(&cert_path, &key_path) {
            if reusable(&existing.chain[0], OffsetDateTime::now_utc()) {
                tracing::debug!(path = %cert_path.display(), "reusing generated certificate");
                return Ok(Self {
                    generated: true,
                    ..existing
                });
            }
            tracing::info!(path = %cert_path.display(), "replacing generated certificate");
        }
        Self::generate(dir, OffsetDateTime::now_utc())
    }

    /// Generates an ECDSA P-256 certificate for `localhost`, `127.0.0.1` and `::1` valid from
    /// one hour before `now`, and stores it in `dir`.
    ///
    /// # Errors
    ///
    /// Returns [`CertError`] when the directory cannot be written or generation fails.
    pub fn generate(dir: &Path, now: OffsetDateTime) -> Result<Self, CertError> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hubcast development certificate");
        params.not_before = now - BACKDATE;
        params.not_after = params.not_before + SPAN;
        let cert = params.self_signed(&key_pair)?;

        let cert_path = dir.join(GENERATED_CERT);
        let key_path = dir.join(GENERATED_KEY);
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| CertError::Write { path, source }
        };
        fs::create_dir_all(dir).map_err(write_error(dir))?;
        write_private(&key_path, key_pair.serialize_pem().as_bytes())
            .map_err(write_error(&key_path))?;
        fs::write(&cert_path, cert.pem()).map_err(write_error(&cert_path))?;

        let der = cert.der().clone();
        Ok(Self {
            sha256: sha256(&der),
            chain: vec![der],
            key: PrivateKeyDer::Pkcs8(key_pair.serialize_der().into()),
            generated: true,
            cert_path,
        })
    }

    /// Returns the hash as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Returns the hash in standard base64.
    pub fn sha256_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.sha256)
    }
}

fn sha256(der: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Tests whether a stored generated certificate can serve again: ECDSA P-256, a span browsers accept
/// for pinning, and more than [`MIN_REMAINING`] left at `now`.
fn reusable(der: &CertificateDer<'_>, now: OffsetDateTime) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let validity = cert.validity();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    let p256 = cert
        .public_key()
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|oid| oid == x509_parser::oid_registry::OID_EC_P256);
    p256 && not_after - not_before < MAX_PINNED_SPAN
        && not_before <= now
        && not_after - now > MIN_REMAINING
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hubcast-cert-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn generated_span_is_under_fourteen_days() {
        let dir = temp_dir("span");
        let now = OffsetDateTime::now_utc();
        let cert = Certificate::generate(&dir, now).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.chain[0].as_ref()).unwrap();
        let validity = parsed.validity();
        let span = validity.not_after.to_datetime() - validity.not_before.to_datetime();
        assert!(span < Duration::days(14), "span {span}");
        assert!(validity.not_before.to_datetime() <= now);
        assert!(reusable(&cert.chain[0], now));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn certificate_is_reused_then_replaced() {
        let dir = temp_dir("reuse");
        let first = Certificate::load_or_generate(&dir).unwrap();
        let second = Certificate::load_or_generate(&dir).unwrap();
        assert_eq!(first.sha256, second.sha256);

        // A certificate generated 12.5 days ago has half a day left and must be replaced.
        let old =
            Certificate::generate(&dir, OffsetDateTime::now_utc() - Duration::hours(300)).unwrap();
        assert!(!reusable(&old.chain[0], OffsetDateTime::now_utc()));
        let third = Certificate::load_or_generate(&dir).unwrap();
        assert_ne!(third.sha256, old.sha256);
        fs::remove_dir_all(dir).unwrap();
    }
}
