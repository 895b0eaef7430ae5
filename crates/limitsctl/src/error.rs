//! What can go wrong, said the way an operator can act on: the server's own
//! message (which names the field at fault) and a hint for the code.

use std::error::Error as _;
use std::fmt;

use tonic::Code;

/// Which service a call went to: the hint for UNIMPLEMENTED differs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Api {
    /// `mercator.limits.v1.LimitsService`.
    Data,
    /// `mercator.limits.admin.v1.LimitsAdminService`.
    Admin,
}

/// A failure of one run of limitsctl.
#[derive(Debug)]
pub enum Error {
    /// limitsd answered the call with an error, or the call failed on the
    /// way (then the status has a source).
    Status {
        status: tonic::Status,
        api: Api,
        addr: String,
    },
    /// No connection to limitsd: refused, no route, or a TLS handshake
    /// that failed.
    Connect {
        addr: String,
        tls: bool,
        error: tonic::transport::Error,
    },
    /// The command line asked for something impossible; reported like
    /// clap's own errors, with exit code 2.
    Usage(String),
    /// Something on this side: a file that cannot be read, a token that
    /// cannot be sent, a model scope to remove that the entry lacks.
    Local(String),
}

impl Error {
    /// A function turning a call's status into an [`Error`].
    pub fn on(api: Api, addr: &str) -> impl Fn(tonic::Status) -> Error + '_ {
        move |status| Error::Status {
            status,
            api,
            addr: addr.to_owned(),
        }
    }

    /// What to do next, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Status { status, api, addr } => status_hint(status, *api, addr),
            Error::Connect { addr, tls, .. } => Some(if *tls {
                format!(
                    "cannot reach limitsd at {addr}: is it running there, and does --ca-cert hold \
                     the CA that signed its certificate for --tls-server-name?"
                )
            } else {
                format!(
                    "cannot reach limitsd at {addr}: is it running there? (a server with TLS \
                     needs https:// and --ca-cert)"
                )
            }),
            Error::Usage(_) | Error::Local(_) => None,
        }
    }
}

/// The hint for each code, from what the API documents it to mean.
fn status_hint(status: &tonic::Status, api: Api, addr: &str) -> Option<String> {
    let hint = match status.code() {
        Code::Unauthenticated => "pass a token with --token or LIMITSD_TOKEN".to_owned(),
        Code::PermissionDenied => {
            "this credential's scope is too small: reads need `read`, changes need `write`"
                .to_owned()
        }
        Code::Unimplemented if api == Api::Admin => "the admin API is off on this server: \
             configure a token (see README, Securing limitsd)"
            .to_owned(),
        Code::Unimplemented => format!("{addr} does not serve this call: is it limitsd?"),
        Code::DeadlineExceeded | Code::Cancelled => {
            "no answer in time: raise --timeout, or check that limitsd is not overloaded".to_owned()
        }
        // A status with a source was made on this side: the connection
        // failed during the call (e.g. plaintext to a TLS listener).
        _ if status.source().is_some() => format!(
            "cannot reach limitsd at {addr}: is it running there? (a server with TLS needs \
             https:// and --ca-cert)"
        ),
        // One without came from limitsd, whose store could not decide.
        Code::Unavailable => "limitsd could not reach its store; retry shortly".to_owned(),
        Code::NotFound => "the subject has no runtime entry (its config limits apply); \
             `limitsctl limits set` creates one"
            .to_owned(),
        Code::AlreadyExists => {
            "the subject already has a runtime entry: change it with `limitsctl limits set`"
                .to_owned()
        }
        Code::Aborted => "the entry changed since its etag was read: read it again with \
             `limitsctl limits get` and retry with the new --etag"
            .to_owned(),
        // The message names the field: an etag given for an entry that
        // does not exist, or a limit the subject does not have.
        Code::FailedPrecondition if status.message().starts_with("etag") => {
            "there is no entry for the etag to match: drop --etag to create one".to_owned()
        }
        Code::FailedPrecondition => "the subject has no such limit to change: give it one \
             first with `limitsctl limits set`"
            .to_owned(),
        Code::ResourceExhausted => "limitsd is at one of its bounds; retry later".to_owned(),
        _ => return None,
    };
    Some(hint)
}

/// The message, and for a failure on this side the causes under it (a
/// transport error alone says only "transport error").
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Status { status, .. } => write_chain(f, status.message(), status.source()),
            Error::Connect { error, .. } => write_chain(f, &error.to_string(), error.source()),
            Error::Usage(message) | Error::Local(message) => f.write_str(message),
        }
    }
}

/// Writes a message and the chain of its causes, each text once (tonic and
/// hyper wrap some errors in a layer that repeats its cause's text).
fn write_chain(
    f: &mut fmt::Formatter<'_>,
    message: &str,
    mut cause: Option<&(dyn std::error::Error + 'static)>,
) -> fmt::Result {
    f.write_str(message)?;
    let mut last = message.to_owned();
    while let Some(e) = cause {
        let text = e.to_string();
        if text != last {
            write!(f, ": {text}")?;
        }
        last = text;
        cause = e.source();
    }
    Ok(())
}
