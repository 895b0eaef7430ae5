//! The gRPC listeners' connections: at most `server.max_connections` at
//! once, and TLS on them when configured.
//!
//! TLS: the certificate and key from files, read
//! again when they change (a renewed certificate is served from the next
//! connection on, without a restart), and optionally client certificates
//! verified against a CA bundle (mTLS), whose names the auth layer maps to
//! a scope.
//!
//! Handshakes run in tasks of their own, so a slow or stalled client cannot
//! hold up the listener; one that does not finish within
//! [`HANDSHAKE_TIMEOUT`] is dropped.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use limits::config::{ClientAuth, TlsSettings};
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who a client certificate names: its subject's common name, then its DNS
/// names (what `limits.security.clients[].subject` is matched against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub names: Vec<String>,
}

/// What the auth layer learns of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    /// The verified client certificate's identity, if one was presented.
    pub peer: Option<Arc<PeerIdentity>>,
}

/// The files' modification times and lengths, to see when they change.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The server side of TLS, with its files.
pub struct Tls {
    settings: TlsSettings,
    config: ArcSwap<rustls::ServerConfig>,
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn files(settings: &TlsSettings) -> Vec<&Path> {
    let mut out = vec![settings.cert_file.as_path(), settings.key_file.as_path()];
    if let Some(ca) = &settings.client_ca_file {
        out.push(ca);
    }
    out
}

fn stamp(settings: &TlsSettings) -> Stamp {
    files(settings)
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// The rustls server config the settings describe; errors name the file.
fn build(settings: &TlsSettings) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = read(
        &settings.cert_file,
        "certificate (limits.server.tls.cert_file)",
    )?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: not a PEM certificate chain: {e}",
                settings.cert_file.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "{}: holds no certificate (limits.server.tls.cert_file)",
            settings.cert_file.display()
        );
    }
    let key_pem = read(
        &settings.key_file,
        "private key (limits.server.tls.key_file)",
    )?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a PEM private key: {e}",
            settings.key_file.display()
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &settings.client_ca_file {
        Some(ca) => {
            let pem = read(ca, "client CA bundle (limits.server.tls.client_ca_file)")?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    anyhow::anyhow!("{}: not a PEM certificate bundle: {e}", ca.display())
                })?;
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!("{}: unusable CA certificate: {e}", ca.display())
                })?;
            }
            if roots.is_empty() {
                anyhow::bail!("{}: holds no CA certificate", ca.display());
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow::anyhow!(
            "{} and {} do not make a usable certificate and key: {e}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl Tls {
    /// Reads the files; an error names the one at fault.
    pub fn load(settings: &TlsSettings) -> anyhow::Result<Tls> {
        let stamp = stamp(settings);
        let config = build(settings)?;
        Ok(Tls {
            settings: settings.clone(),
            config: ArcSwap::from_pointee(config),
            stamp: Mutex::new(stamp),
        })
    }

    /// Reads the files again if any changed since they were last read.
    /// A set that does not load (a certificate written before its key, say)
    /// keeps the one in use and is tried again at the next look.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.settings);
        if *self.stamp.lock() == now {
            return false;
        }
        match build(&self.settings) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                *self.stamp.lock() = now;
                tracing::info!(
                    cert = %self.settings.cert_file.display(),
                    "TLS certificate files changed: serving the new ones"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "TLS files changed but do not load; still serving the previous ones"
                );
                false
            }
        }
    }

    /// The paths the settings name, for a watcher.
    pub fn paths(&self) -> Vec<PathBuf> {
        files(&self.settings)
            .into_iter()
            .map(Path::to_owned)
            .collect()
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }
}

/// A connection as the server reads it: plain or TLS.
pub enum Conn {
    Plain(Counted<TcpStream>),
    Tls(
        Box<TlsStream<Counted<TcpStream>>>,
        Option<Arc<PeerIdentity>>,
    ),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Plain(_) => f.write_str("Conn::Plain"),
            Conn::Tls(_, peer) => f.debug_tuple("Conn::Tls").field(peer).finish(),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(io) => ConnInfo {
                tcp: io.connect_info(),
                peer: None,
            },
            Conn::Tls(io, peer) => ConnInfo {
                tcp: io.get_ref().0.connect_info(),
                peer: peer.clone(),
            },
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_flush(cx),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(io) => io.is_write_vectored(),
            Conn::Tls(io, _) => io.is_write_vectored(),
        }
    }
}

/// The names a client certificate gives: the subject's common names, then
/// its DNS names.
fn identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    Some(PeerIdentity { names })
}

/// The connections of a listener, at most `max` at once, plain or (with
/// `tls`) after a handshake in a task of its own.
pub fn incoming(
    listener: TcpListener,
    max: usize,
    tls: Option<Arc<Tls>>,
) -> Pin<Box<dyn tokio_stream::Stream<Item = io::Result<Conn>> + Send>> {
    use tokio_stream::StreamExt;
    let tcp = bounded(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        max,
    );
    let Some(tls) = tls else {
        return Box::pin(tcp.map(|r| r.map(Conn::Plain)));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        let mut tcp = Box::pin(tcp);
        loop {
            // Stop accepting once the server no longer takes connections.
            let next = tokio::select! {
                next = tcp.next() => next,
                () = tx.closed() => return,
            };
            let Some(next) = next else {
                return;
            };
            let io = match next {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let peer = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(identity)
                            .map(Arc::new);
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream), peer))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// A connection, holding one of the listener's `max_connections` permits
/// until it closes.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The listener's connections, at most `max` at once: past that it stops
/// accepting until one closes.
pub fn bounded<S, IO, E>(
    incoming: S,
    max: usize,
) -> impl tokio_stream::Stream<Item = Result<Counted<IO>, E>>
where
    S: tokio_stream::Stream<Item = Result<IO, E>> + Unpin,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    futures_util::stream::unfold((incoming, permits), |(mut incoming, permits)| async move {
        use tokio_stream::StreamExt;
        // Wait for room before accepting, so the kernel holds the rest.
        let permit = permits.clone().acquire_owned().await.ok()?;
        let next = incoming.next().await?;
        let item = next.map(|io| Counted {
            io,
            _permit: permit,
        });
        Some((item, (incoming, permits)))
    })
}
