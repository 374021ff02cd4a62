//! The cluster's certificate authority and the certificates it issues.
//!
//! A CA is an ECDSA P-256 key and a self-signed certificate (`ca.pem`, `ca-key.pem`). Its subject is always
//! `CN=davit CA, O=davit`, so the issuer of a certificate is rebuilt from the key alone, without parsing the
//! CA certificate. Issued certificates carry their role's names (see [`Role`]) and both TLS usages a role
//! needs; node keys are made on the node and only their public half travels ([`NodeKey`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;

use crate::{CLI_NAME, SERVER_NAME, TlsError, node_name, read, write_atomic};

/// What a certificate is for, and so the names it is valid for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// [`SERVER_NAME`], `localhost`, `127.0.0.1`, `::1` and `extra` (host names or IP addresses, for tools
    /// that check the address they dial, such as curl or Prometheus).
    Server { extra: Vec<String> },
    /// [`node_name`]`(id)` and `extra` (the address the node's API is reached at).
    Node { id: String, extra: Vec<String> },
    /// [`CLI_NAME`]: a client certificate for people and tools.
    Cli,
}

impl Role {
    fn names(&self) -> Vec<String> {
        match self {
            Role::Server { extra } => {
                let mut names: Vec<String> = [SERVER_NAME, "localhost", "127.0.0.1", "::1"].map(str::to_string).into();
                names.extend(extra.iter().cloned());
                names
            }
            Role::Node { id, extra } => std::iter::once(node_name(id)).chain(extra.iter().cloned()).collect(),
            Role::Cli => vec![CLI_NAME.to_string()],
        }
    }

    fn common_name(&self) -> String {
        match self {
            Role::Server { .. } => "davit server".to_string(),
            Role::Node { id, .. } => format!("davit node {id}"),
            Role::Cli => "davit cli".to_string(),
        }
    }
}

/// A certificate the CA signed.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    /// Seconds since the Unix epoch.
    pub not_after: u64,
}

/// The public half of a node's key: the uncompressed P-256 point (65 bytes), sent as hex.
pub struct NodeKey(Vec<u8>);

impl NodeKey {
    pub fn from_hex(text: &str) -> Result<NodeKey, TlsError> {
        let bytes = (text.len() == 130 && text.is_ascii())
            .then(|| (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect::<Option<Vec<u8>>>())
            .flatten()
            .filter(|bytes| bytes[0] == 4)
            .ok_or_else(|| {
                TlsError::Certificate("a node key is an uncompressed P-256 public key: 130 hex digits starting with 04".to_string())
            })?;
        Ok(NodeKey(bytes))
    }

    /// A new key pair for a node: its private key (PEM, to keep owner-only) and its public half (hex).
    pub fn generate() -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(certificate_error)?;
        Ok((key.serialize_pem(), crate::hex(key.public_key_raw())))
    }
}

impl PublicKeyData for NodeKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A certificate authority: its certificate and its signing key.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub const CERT_FILE: &'static str = "ca.pem";
    pub const KEY_FILE: &'static str = "ca-key.pem";

    /// A new CA valid for `ttl`.
    pub fn generate(ttl: Duration) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(certificate_error)?;
        let mut params = ca_params();
        set_validity(&mut params, ttl);
        let cert = params.self_signed(&key).map_err(certificate_error)?;
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(ca_params(), key) })
    }

    /// Writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir`; refuses to replace an existing CA, whose
    /// loss would leave every certificate it signed without a way to renew it.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
        let (cert, key) = (dir.join(Ca::CERT_FILE), dir.join(Ca::KEY_FILE));
        for path in [&cert, &key] {
            if path.exists() {
                return Err(TlsError::Config(format!("{} exists: a CA is there already (remove it first to replace it)", path.display())));
            }
        }
        write_atomic(&key, self.issuer.key().serialize_pem(), 0o600)?;
        write_atomic(&cert, &self.cert_pem, 0o644)?;
        Ok((cert, key))
    }

    /// The CA of `cert` and `key` (files written by [`Ca::write`]).
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, TlsError> {
        let cert_pem = read(cert)?;
        crate::certs_from_pem(cert, &cert_pem)?;
        let key = KeyPair::from_pem(&read(key)?).map_err(|error| TlsError::Pem { path: key.to_path_buf(), message: error.to_string() })?;
        Ok(Ca { cert_pem, issuer: Issuer::new(ca_params(), key) })
    }

    /// The CA in `dir`, made there (valid ten years) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Ca, TlsError> {
        let (cert, key) = (dir.join(Ca::CERT_FILE), dir.join(Ca::KEY_FILE));
        if cert.exists() || key.exists() {
            return Ca::load(&cert, &key);
        }
        let ca = Ca::generate(Duration::from_secs(10 * 365 * 24 * 3600))?;
        ca.write(dir)?;
        tracing::info!(cert = %cert.display(), "created the cluster's certificate authority");
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `role` and `public_key`, valid for `ttl` (and from a little before now, for clock
    /// skew).
    pub fn issue(&self, role: &Role, public_key: &impl PublicKeyData, ttl: Duration) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&role.common_name());
        params.subject_alt_names = role.names().iter().map(|name| san(name)).collect::<Result<_, _>>()?;
        params.key_usages = match role {
            Role::Cli => vec![KeyUsagePurpose::DigitalSignature],
            // Key encipherment too, although an ECDSA key never enciphers: QEMU before 10.0 refuses a certificate
            // whose critical key usage lacks it, and nodes' certificates secure live migrations between QEMUs.
            Role::Server { .. } | Role::Node { .. } => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
        };
        params.extended_key_usages = match role {
            Role::Cli => vec![ExtendedKeyUsagePurpose::ClientAuth],
            // Servers also dial agents, and agents also serve their API: both ends of mutual TLS.
            Role::Server { .. } | Role::Node { .. } => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let not_after = set_validity(&mut params, ttl);
        let cert = params.signed_by(public_key, &self.issuer).map_err(certificate_error)?;
        Ok(Issued { cert_pem: cert.pem(), not_after })
    }

    /// A new key and a certificate for it: `(certificate, key PEM)`.
    pub fn issue_with_key(&self, role: &Role, ttl: Duration) -> Result<(Issued, String), TlsError> {
        let key = KeyPair::generate().map_err(certificate_error)?;
        Ok((self.issue(role, &key, ttl)?, key.serialize_pem()))
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("davit CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "davit");
    name.push(DnType::CommonName, common_name);
    name
}

fn san(name: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty() && rustls_pki_types::DnsName::try_from(name).is_ok();
    let dns = valid.then(|| name.try_into().ok()).flatten();
    dns.map(SanType::DnsName).ok_or_else(|| TlsError::Certificate(format!("`{name}` is neither a host name nor an IP address")))
}

/// Sets a random serial and the validity window; returns the end (Unix seconds).
fn set_validity(params: &mut CertificateParams, ttl: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // Valid a little before now, for clocks behind ours: five minutes, less for short-lived certificates.
    let start = now.saturating_sub(Duration::from_secs(300).min(ttl / 10));
    let end = now + ttl;
    let at = |t: Duration| time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    params.not_before = at(start);
    params.not_after = at(end);
    // Positive and 16 bytes long: RFC 5280 asks for at most 20, and for uniqueness per CA.
    let mut serial = [0u8; 16];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut serial).expect("the OS random number generator works");
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    end.as_secs()
}

fn certificate_error(error: rcgen::Error) -> TlsError {
    TlsError::Certificate(error.to_string())
}

/// When a certificate becomes valid and when it expires (Unix seconds), read from its DER; `None` if it
/// cannot be parsed.
pub fn validity(cert: &CertificateDer<'_>) -> Option<(u64, u64)> {
    use yasna::tags::{TAG_GENERALIZEDTIME, TAG_UTCTIME};
    let skip_rest = |r: &mut yasna::BERReaderSeq| -> yasna::ASN1Result<()> {
        while r.read_optional(|r| r.read_der())?.is_some() {}
        Ok(())
    };
    let read_time = |time: yasna::BERReader| -> yasna::ASN1Result<i64> {
        match time.lookahead_tag()? {
            TAG_UTCTIME => Ok(time.read_utctime()?.datetime().unix_timestamp()),
            TAG_GENERALIZEDTIME => Ok(time.read_generalized_time()?.datetime().unix_timestamp()),
            _ => Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid)),
        }
    };
    let result = yasna::parse_der(cert, |r| {
        r.read_sequence(|certificate| {
            let validity = certificate.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_der()))?;
                for _serial_signature_issuer in 0..3 {
                    tbs.next().read_der()?;
                }
                let validity = tbs.next().read_sequence(|validity| Ok((read_time(validity.next())?, read_time(validity.next())?)))?;
                skip_rest(tbs)?;
                Ok(validity)
            })?;
            skip_rest(certificate)?;
            Ok(validity)
        })
    });
    let (start, end) = result.ok()?;
    Some((u64::try_from(start).ok()?, u64::try_from(end).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_its_node_and_expires_when_issued() {
        let ca = Ca::generate(Duration::from_secs(3600)).unwrap();
        let (_key, public) = NodeKey::generate().unwrap();
        let role = Role::Node { id: "5b1c".to_string(), extra: vec!["10.1.2.3".to_string()] };
        let issued = ca.issue(&role, &NodeKey::from_hex(&public).unwrap(), Duration::from_secs(600)).unwrap();
        let der = crate::certs_from_pem(Path::new("node.pem"), &issued.cert_pem).unwrap().remove(0);
        assert_eq!(validity(&der).map(|(_, end)| end), Some(issued.not_after));
        assert!(crate::cert_is_for(&der, "5b1c.node.davit"));
        assert!(!crate::cert_is_for(&der, "other.node.davit"));
        assert!(!crate::cert_is_for(&der, SERVER_NAME), "a node is not a server");
    }

    #[test]
    fn a_ca_is_written_owner_only_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(Ca::KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let error = Ca::generate(Duration::from_secs(60)).unwrap().write(dir.path()).unwrap_err();
        assert!(error.to_string().contains("a CA is there already"), "{error}");
    }

    #[test]
    fn bad_node_keys_and_names_are_refused() {
        assert!(NodeKey::from_hex("04abcd").is_err());
        assert!(NodeKey::from_hex(&"zz".repeat(65)).is_err());
        let ca = Ca::generate(Duration::from_secs(60)).unwrap();
        let error = ca.issue_with_key(&Role::Server { extra: vec!["bad name!".to_string()] }, Duration::from_secs(60)).unwrap_err();
        assert!(error.to_string().contains("neither a host name nor an IP address"), "{error}");
    }
}
