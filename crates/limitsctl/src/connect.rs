//! The connection to limitsd: the address, TLS (a CA, a client
//! certificate), the timeout, and the bearer token on every call.

use std::fmt;
use std::path::Path;

use limits_server::pb::admin::limits_admin_service_client::LimitsAdminServiceClient;
use limits_server::pb::limits_service_client::LimitsServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::cli::Global;
use crate::error::{Api, Error};

/// A connection to limitsd, and the credential its calls carry.
#[derive(Debug)]
pub struct Conn {
    channel: Channel,
    auth: Auth,
    /// The address as given, for messages.
    pub addr: String,
}

/// Adds `authorization: Bearer <token>` to every call, when a token was
/// given.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// Never shows the token.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0.is_some() {
            "Bearer <hidden>"
        } else {
            "none"
        };
        f.debug_tuple("Auth").field(&shown).finish()
    }
}

/// Where to connect and how: the URL tonic is given and whether it is TLS.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    url: String,
    tls: bool,
    /// The host, as a certificate names it (no brackets around IPv6).
    host: String,
}

/// Reads `--addr`: `http://host:port`, `https://host:port`, or `host:port`
/// (TLS when a TLS option is given, else plaintext).
fn target(addr: &str, tls_options: bool) -> Result<Target, Error> {
    let (url, tls) = if let Some(rest) = addr.strip_prefix("https://") {
        (format!("https://{rest}"), true)
    } else if addr.starts_with("http://") {
        if tls_options {
            return Err(Error::Usage(format!(
                "--addr {addr} is plaintext, but --ca-cert or --cert asks for TLS: use https://"
            )));
        }
        (addr.to_owned(), false)
    } else if addr.contains("://") {
        return Err(Error::Usage(format!(
            "--addr {addr}: the scheme must be http:// or https://"
        )));
    } else if tls_options {
        (format!("https://{addr}"), true)
    } else {
        (format!("http://{addr}"), false)
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::Usage(format!("--addr {addr} is not an address: {e}")))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Error::Usage(format!("--addr {addr} has no host")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Target { url, tls, host })
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Local(format!("cannot read {flag} {}: {e}", path.display())))
}

impl Conn {
    /// Connects to limitsd as the global options say.
    pub async fn open(g: &Global) -> Result<Conn, Error> {
        let auth = match &g.token {
            None => Auth(None),
            Some(token) => {
                // The message never quotes the token.
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {}", token.trim()).parse().map_err(|_| {
                        Error::Local(
                            "the token has characters a header cannot carry (printable ASCII only)"
                                .to_owned(),
                        )
                    })?;
                value.set_sensitive(true);
                Auth(Some(value))
            }
        };
        let t = target(&g.addr, g.ca_cert.is_some() || g.cert.is_some())?;
        let mut endpoint = Endpoint::from_shared(t.url.clone())
            .map_err(|e| Error::Usage(format!("--addr {}: {e}", g.addr)))?
            .timeout(g.timeout)
            .connect_timeout(g.timeout)
            .user_agent(concat!("limitsctl/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| Error::Local(e.to_string()))?;
        if t.tls {
            let name = g.tls_server_name.clone().unwrap_or_else(|| t.host.clone());
            let mut tls = ClientTlsConfig::new().domain_name(name);
            tls = match &g.ca_cert {
                Some(path) => tls.ca_certificate(Certificate::from_pem(read("--ca-cert", path)?)),
                // No CA given: the roots this system trusts.
                None => tls.with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&g.cert, &g.key) {
                tls = tls.identity(Identity::from_pem(
                    read("--cert", cert)?,
                    read("--key", key)?,
                ));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::Local(format!("TLS: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|error| Error::Connect {
            addr: g.addr.clone(),
            tls: t.tls,
            error,
        })?;
        Ok(Conn {
            channel,
            auth,
            addr: g.addr.clone(),
        })
    }

    /// A client of the admin API.
    pub fn admin(&self) -> LimitsAdminServiceClient<InterceptedService<Channel, Auth>> {
        LimitsAdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// A client of the data plane.
    pub fn limits(&self) -> LimitsServiceClient<InterceptedService<Channel, Auth>> {
        LimitsServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Turns a failed call's status into an [`Error`].
    pub fn failed(&self, api: Api) -> impl Fn(tonic::Status) -> Error + '_ {
        Error::on(api, &self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_form_of_address() {
        let t = target("127.0.0.1:50051", false).unwrap();
        assert_eq!((t.url.as_str(), t.tls), ("http://127.0.0.1:50051", false));
        let t = target("localhost:50051", true).unwrap();
        assert_eq!((t.url.as_str(), t.tls), ("https://localhost:50051", true));
        assert_eq!(t.host, "localhost");
        let t = target("https://[::1]:50051", false).unwrap();
        assert_eq!((t.tls, t.host.as_str()), (true, "::1"));
        assert!(matches!(
            target("http://127.0.0.1:1", true),
            Err(Error::Usage(_))
        ));
        assert!(matches!(target("ftp://x:1", false), Err(Error::Usage(_))));
    }
}
