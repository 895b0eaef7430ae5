//! TLS and client certificates end to end: real certificates (made here
//! with rcgen), the real limitsd, tonic's TLS client. The right
//! certificates connect; the wrong ones do not; a client certificate maps
//! to a scope by name; renewed certificate files are served without a
//! restart.

mod common;

use std::path::Path;

use common::*;
use limits_server::pb::admin as apb;
use limits_server::pb::admin::limits_admin_service_client::LimitsAdminServiceClient;
use limits_server::pb::limits_service_client::LimitsServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const READ_TOKEN: &str = "r-tls-reader-0123";

/// A CA, and certificates it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), with
    /// `cn` as its common name: (certificate PEM, key PEM).
    fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Pki {
    ca: Ca,
    client: (String, String),
}

/// Writes a CA, a server certificate for 127.0.0.1 / localhost and a client
/// certificate for `ops.example.com` to `dir`.
fn pki(dir: &Path) -> Pki {
    let ca = Ca::new("limitsd test CA");
    let (cert, key) = ca.leaf("limitsd", &["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    let client = ca.leaf("ops.example.com", &["ops.example.com"]);
    Pki { ca, client }
}

fn config(dir: &Path, client_auth: &str) -> String {
    format!(
        r#"limits:
  budgets:
    by_api_key:
      sk-tls: {{ daily: 1.00 }}
  server:
    tls:
      cert_file: {dir}/server.crt
      key_file: {dir}/server.key
      client_ca_file: {dir}/ca.crt
      client_auth: {client_auth}
    reload_interval: 50ms
  security:
    tokens:
      - {{ name: auditor, sha256: "{sha}", scope: read }}
    clients:
      - {{ subject: ops.example.com, scope: write }}
"#,
        dir = dir.display(),
        sha = hex::encode(Sha256::digest(READ_TOKEN.as_bytes())),
    )
}

/// A channel over TLS trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    d: &Limitsd,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", d.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

fn start(client_auth: &str) -> (Limitsd, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let path = dir.path().join("limits.yaml");
    std::fs::write(&path, config(dir.path(), client_auth)).unwrap();
    (Limitsd::spawn(dir, &path, &[]), pki)
}

async fn check_ok(channel: Channel) -> Result<bool, tonic::Status> {
    LimitsServiceClient::new(channel)
        .check_limits(check(vec![key("sk-tls")], 0.1))
        .await
        .map(|r| r.into_inner().allowed)
}

#[tokio::test]
async fn the_right_certificates_connect_and_the_wrong_ones_do_not() {
    let (d, pki) = start("optional");
    // TLS with the CA: served.
    let ch = tls_channel(&d, &pki.ca.pem(), None)
        .await
        .expect("TLS connects");
    assert!(check_ok(ch).await.unwrap());
    // Plaintext against a TLS listener: no answer.
    let plain = Channel::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(check_ok(ch).await.is_err(), "plaintext was served");
    }
    // A client that does not trust the server's CA refuses it.
    let other = Ca::new("another CA");
    let refused = match tls_channel(&d, &other.pem(), None).await {
        Ok(ch) => check_ok(ch).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a server certificate from an unknown CA was accepted"
    );
    // A client certificate from another CA is refused in the handshake.
    let rogue = other.leaf("ops.example.com", &["ops.example.com"]);
    let refused = match tls_channel(&d, &pki.ca.pem(), Some(&rogue)).await {
        Ok(ch) => check_ok(ch).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a client certificate from an unknown CA was accepted"
    );
}

#[tokio::test]
async fn a_client_certificate_maps_to_its_scope_and_names_the_actor() {
    let (d, pki) = start("optional");
    let with_cert = tls_channel(&d, &pki.ca.pem(), Some(&pki.client))
        .await
        .unwrap();
    let mut admin = LimitsAdminServiceClient::new(with_cert);
    admin
        .create_subject_limits(apb::CreateSubjectLimitsRequest {
            subject_limits: Some(apb::SubjectLimits {
                subject: Some(key("sk-tls")),
                daily_usd: Some(0.05),
                ..Default::default()
            }),
            reason: "mTLS".into(),
        })
        .await
        .expect("the certificate's write scope");
    // Without a certificate, a read token reads but cannot write.
    let no_cert = tls_channel(&d, &pki.ca.pem(), None).await.unwrap();
    let mut reader = LimitsAdminServiceClient::new(no_cert.clone());
    let mut r = tonic::Request::new(apb::ListAuditEventsRequest::default());
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {READ_TOKEN}").parse().unwrap(),
    );
    let events = reader
        .list_audit_events(r)
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "cert:ops.example.com");
    let mut r = tonic::Request::new(apb::DeleteSubjectLimitsRequest {
        subject: Some(apb::SubjectRef {
            subject: Some(key("sk-tls")),
            key_hash: String::new(),
        }),
        etag: String::new(),
        reason: "no".into(),
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {READ_TOKEN}").parse().unwrap(),
    );
    assert_eq!(
        reader.delete_subject_limits(r).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // And with neither, UNAUTHENTICATED.
    let e = LimitsAdminServiceClient::new(no_cert)
        .list_subject_limits(apb::ListSubjectLimitsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // The entry is enforced.
    let ch = tls_channel(&d, &pki.ca.pem(), None).await.unwrap();
    assert!(
        !check_ok(ch).await.unwrap(),
        "$0.10 over a $0.05 runtime budget"
    );
}

#[tokio::test]
async fn a_required_client_certificate_refuses_clients_without_one() {
    let (d, pki) = start("required");
    let refused = match tls_channel(&d, &pki.ca.pem(), None).await {
        Ok(ch) => check_ok(ch).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");
    let ch = tls_channel(&d, &pki.ca.pem(), Some(&pki.client))
        .await
        .unwrap();
    assert!(check_ok(ch).await.unwrap());
}

#[tokio::test]
async fn renewed_certificate_files_are_served_without_a_restart() {
    let (d, pki) = start("optional");
    assert!(
        check_ok(tls_channel(&d, &pki.ca.pem(), None).await.unwrap())
            .await
            .unwrap()
    );
    // A new CA signs the renewed server certificate.
    let renewed = Ca::new("renewed CA");
    let (cert, key) = renewed.leaf("limitsd", &["localhost", "127.0.0.1"]);
    // The key first, then the certificate: in between the pair does not
    // load, and the old one keeps being served.
    std::fs::write(d.dir.path().join("server.key"), key).unwrap();
    std::fs::write(d.dir.path().join("server.crt"), cert).unwrap();
    eventually("the renewed certificate", || async {
        match tls_channel(&d, &renewed.pem(), None).await {
            Ok(ch) => check_ok(ch).await.ok().map(|_| ()),
            Err(_) => None,
        }
    })
    .await;
    // The old CA no longer verifies the server.
    let refused = match tls_channel(&d, &pki.ca.pem(), None).await {
        Ok(ch) => check_ok(ch).await.is_err(),
        Err(_) => true,
    };
    assert!(refused);
}

#[test]
fn unreadable_tls_files_fail_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.crt"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
    std::fs::write(dir.path().join("ca.crt"), "nope").unwrap();
    let path = dir.path().join("limits.yaml");
    std::fs::write(&path, config(dir.path(), "optional")).unwrap();
    let (status, err) = run_to_exit(dir.path(), &path);
    assert!(!status.success());
    assert!(err.contains("server.crt"), "{err}");
}
