//! Who may call what. The admin API always needs a credential; the data
//! plane (LimitsService, Envoy's rate limit service) only with
//! `limits.security.data_plane_auth`; health and reflection never.
//!
//! A credential is a bearer token (`authorization: Bearer <token>`),
//! compared by its SHA-256 against every configured token in constant time,
//! or a verified client certificate (mTLS) whose common name or DNS name a
//! `limits.security.clients` entry maps to a scope. The caller's scope is
//! the higher of the two. No credential, or a token that is not one, is
//! `UNAUTHENTICATED`; a credential whose scope is too small is
//! `PERMISSION_DENIED`. The actor (the token's name, or `cert:<name>`)
//! reaches the handlers for the audit trail. Tokens never reach logs.
//!
//! With no credential configured at all, the admin API answers
//! `UNIMPLEMENTED` (it is off, and limitsd says so at start-up).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use limits::config::{Scope, SecuritySettings};
use limits_store::Store;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::api::Shared;
use crate::listen::ConnInfo;

/// The admin API's path prefix.
pub const ADMIN_PREFIX: &str = "/mercator.limits.admin.v1.LimitsAdminService/";

/// Who is calling, as the audit trail names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

/// What a call needs.
fn needs(path: &str, data_plane_auth: bool) -> Option<Scope> {
    if let Some(method) = path.strip_prefix(ADMIN_PREFIX) {
        let read = method.starts_with("Get") || method.starts_with("List");
        return Some(if read { Scope::Read } else { Scope::Write });
    }
    let data = path.starts_with("/mercator.limits.v1.LimitsService/")
        || path.starts_with("/envoy.service.ratelimit.v3.RateLimitService/");
    (data && data_plane_auth).then_some(Scope::Data)
}

/// The bearer token of a call, if it sent one.
fn bearer<B>(req: &Request<B>) -> Option<Result<&[u8], ()>> {
    let value = req.headers().get(http::header::AUTHORIZATION)?;
    let bytes = value.as_bytes();
    let token = bytes
        .strip_prefix(b"Bearer ")
        .or_else(|| bytes.strip_prefix(b"bearer "));
    Some(token.filter(|t| !t.is_empty()).ok_or(()))
}

/// The token's name and scope, if it is one of `security`'s. Every
/// configured token is compared, whichever matches, so the time taken
/// does not tell which (or whether one) did.
fn token_of<'s>(security: &'s SecuritySettings, token: &[u8]) -> Option<(&'s str, Scope)> {
    let digest: [u8; 32] = Sha256::digest(token).into();
    let mut found = None;
    for t in &security.tokens {
        if bool::from(t.sha256.ct_eq(&digest)) {
            found = Some((t.name.as_str(), t.scope));
        }
    }
    found
}

/// The scope a verified client certificate maps to, with the name matched.
fn client_of<'i>(
    security: &SecuritySettings,
    info: Option<&'i ConnInfo>,
) -> Option<(&'i str, Scope)> {
    let peer = info?.peer.as_ref()?;
    let mut best: Option<(&str, Scope)> = None;
    for name in &peer.names {
        for c in security.clients.iter().filter(|c| &c.subject == name) {
            if best.is_none_or(|(_, s)| c.scope > s) {
                best = Some((name.as_str(), c.scope));
            }
        }
    }
    best
}

/// Decides a call: the actor, or the status to answer instead.
fn decide<B>(security: &SecuritySettings, req: &Request<B>, need: Scope) -> Result<Actor, Status> {
    if need >= Scope::Read && !security.any_credential() {
        return Err(Status::unimplemented(
            "the admin API is off: no credential is configured (set \
             limits.security.admin_token_sha256, tokens, tokens_file or clients)",
        ));
    }
    let info = req.extensions().get::<ConnInfo>();
    let client = client_of(security, info);
    let token = match bearer(req) {
        None => None,
        Some(Err(())) => {
            return Err(Status::unauthenticated(
                "authorization: expected \"Bearer <token>\"",
            ));
        }
        Some(Ok(t)) => match token_of(security, t) {
            Some(found) => Some(found),
            None => return Err(Status::unauthenticated("authorization: unknown token")),
        },
    };
    let (actor, scope) = match (token, client) {
        (None, None) => {
            return Err(Status::unauthenticated(
                "a credential is required: authorization: Bearer <token>, or a client \
                 certificate limits.security.clients maps to a scope",
            ));
        }
        (Some((name, s)), None) => (name.to_owned(), s),
        (None, Some((name, s))) => (format!("cert:{name}"), s),
        (Some((name, a)), Some((_, b))) => (name.to_owned(), a.max(b)),
    };
    if scope < need {
        return Err(Status::permission_denied(format!(
            "{actor} has the {} scope; this call needs {}",
            scope.as_str(),
            need.as_str()
        )));
    }
    Ok(Actor(actor))
}

/// The layer, added to each server once.
pub struct AuthLayer<S> {
    shared: Arc<Shared<S>>,
}

impl<S> AuthLayer<S> {
    pub fn new(shared: Arc<Shared<S>>) -> AuthLayer<S> {
        AuthLayer { shared }
    }
}

impl<S> Clone for AuthLayer<S> {
    fn clone(&self) -> Self {
        AuthLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for AuthLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthLayer")
    }
}

impl<S, I> Layer<I> for AuthLayer<S> {
    type Service = Auth<S, I>;

    fn layer(&self, inner: I) -> Auth<S, I> {
        Auth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service the layer makes.
pub struct Auth<S, I> {
    inner: I,
    shared: Arc<Shared<S>>,
}

impl<S, I> std::fmt::Debug for Auth<S, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth")
    }
}

impl<S, I: Clone> Clone for Auth<S, I> {
    fn clone(&self) -> Self {
        Auth {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, I> Service<Request<Body>> for Auth<S, I>
where
    S: Store,
    I: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = I::Error;
    type Future = Either<std::future::Ready<Result<Response<Body>, I::Error>>, I::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), I::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let decided = self.shared.limiter.with_config(|config| {
            let security = &config.security;
            needs(req.uri().path(), security.data_plane_auth)
                .map(|need| decide(security, &req, need))
        });
        let Some(decided) = decided else {
            return Either::Right(self.inner.call(req));
        };
        match decided {
            Ok(actor) => {
                req.extensions_mut().insert(actor);
                Either::Right(self.inner.call(req))
            }
            Err(status) => {
                crate::ops::metrics::auth_refused(status.code());
                Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limits::config::{ClientIdentity, Token};

    use crate::listen::PeerIdentity;

    fn settings() -> SecuritySettings {
        SecuritySettings {
            tokens: vec![
                Token {
                    name: "reader".into(),
                    sha256: Sha256::digest(b"r-token").into(),
                    scope: Scope::Read,
                },
                Token {
                    name: "ops".into(),
                    sha256: Sha256::digest(b"w-token").into(),
                    scope: Scope::Write,
                },
            ],
            clients: vec![ClientIdentity {
                subject: "ops.example.com".into(),
                scope: Scope::Write,
            }],
            data_plane_auth: false,
        }
    }

    fn call(auth: Option<&str>, peer: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(a) = auth {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        if let Some(name) = peer {
            req.extensions_mut().insert(ConnInfo {
                tcp: tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: None,
                },
                peer: Some(Arc::new(PeerIdentity {
                    names: vec![name.to_owned()],
                })),
            });
        }
        req
    }

    #[test]
    fn calls_need_the_scope_of_their_method() {
        assert_eq!(
            needs(&format!("{ADMIN_PREFIX}GetSubjectLimits"), false),
            Some(Scope::Read)
        );
        assert_eq!(
            needs(&format!("{ADMIN_PREFIX}ListAuditEvents"), false),
            Some(Scope::Read)
        );
        assert_eq!(
            needs(&format!("{ADMIN_PREFIX}AdjustUsage"), false),
            Some(Scope::Write)
        );
        assert_eq!(
            needs("/mercator.limits.v1.LimitsService/CheckLimits", false),
            None
        );
        assert_eq!(
            needs("/mercator.limits.v1.LimitsService/CheckLimits", true),
            Some(Scope::Data)
        );
        assert_eq!(needs("/grpc.health.v1.Health/Check", true), None);
    }

    #[test]
    fn tokens_and_certificates_decide_the_scope() {
        let s = settings();
        let code = |r: Result<Actor, Status>| r.map_err(|e| e.code());
        assert_eq!(
            code(decide(
                &s,
                &call(Some("Bearer w-token"), None),
                Scope::Write
            )),
            Ok(Actor("ops".into()))
        );
        assert_eq!(
            code(decide(&s, &call(Some("Bearer r-token"), None), Scope::Read)),
            Ok(Actor("reader".into()))
        );
        assert_eq!(
            code(decide(
                &s,
                &call(Some("Bearer r-token"), None),
                Scope::Write
            )),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(decide(&s, &call(Some("Bearer nope"), None), Scope::Read)),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(decide(&s, &call(Some("Basic abc"), None), Scope::Read)),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(decide(&s, &call(None, None), Scope::Read)),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(decide(
                &s,
                &call(None, Some("ops.example.com")),
                Scope::Write
            )),
            Ok(Actor("cert:ops.example.com".into()))
        );
        assert_eq!(
            code(decide(
                &s,
                &call(None, Some("stranger.example.com")),
                Scope::Read
            )),
            Err(tonic::Code::Unauthenticated)
        );
        // A reader token on a mapped certificate gets the higher scope.
        assert_eq!(
            code(decide(
                &s,
                &call(Some("Bearer r-token"), Some("ops.example.com")),
                Scope::Write
            )),
            Ok(Actor("reader".into()))
        );
        let none = SecuritySettings::default();
        assert_eq!(
            code(decide(
                &none,
                &call(Some("Bearer w-token"), None),
                Scope::Read
            )),
            Err(tonic::Code::Unimplemented)
        );
    }
}
