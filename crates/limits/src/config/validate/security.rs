//! `limits.security`: the credentials the admin API (and, with
//! `data_plane_auth`, the data plane) accepts. Tokens are configured by
//! their SHA-256 only, each with a name (shown in the audit trail) and a
//! scope.

use std::path::Path;

use serde::Deserialize;

use crate::config::error::{ConfigError, Result};
use crate::config::keys::{RawClient, RawSecurity, RawToken, SCOPES};
use crate::config::setting::parse_digest;
use crate::config::{ClientIdentity, Scope, SecuritySettings, Token};

/// The name of the token `admin_token_sha256` configures.
pub(crate) const ADMIN_TOKEN_NAME: &str = "admin";

pub(super) fn build(raw: &RawSecurity) -> Result<SecuritySettings> {
    let keys = raw.check()?;
    let mut tokens = Vec::new();
    for (i, t) in raw.tokens.iter().enumerate() {
        tokens.push(token(&format!("limits.security.tokens[{i}]"), t)?);
    }
    if let Some(path) = &keys.tokens_file {
        tokens.extend(tokens_file(path)?);
    }
    if let Some(sha256) = keys.admin_token_sha256 {
        tokens.push(Token {
            name: ADMIN_TOKEN_NAME.to_owned(),
            sha256,
            scope: Scope::Write,
        });
    }
    for (i, t) in tokens.iter().enumerate() {
        if let Some(j) = tokens[..i].iter().position(|u| u.name == t.name) {
            return Err(ConfigError::new(
                "limits.security.tokens",
                format!(
                    "two tokens are named {:?} (entries {j} and {i}, counting tokens_file and \
                     admin_token_sha256 after tokens): names tell actors apart in the audit trail",
                    t.name
                ),
            ));
        }
        if tokens[..i].iter().any(|u| u.sha256 == t.sha256) {
            return Err(ConfigError::new(
                "limits.security.tokens",
                format!("token {:?} has the same sha256 as another token", t.name),
            ));
        }
    }
    let mut clients = Vec::new();
    for (i, c) in raw.clients.iter().enumerate() {
        clients.push(client(&format!("limits.security.clients[{i}]"), c)?);
    }
    Ok(SecuritySettings {
        tokens,
        clients,
        data_plane_auth: keys.data_plane_auth,
    })
}

fn scope(key: &str, raw: Option<&str>) -> Result<Scope> {
    let Some(text) = raw else {
        return Err(ConfigError::new(key, "is required (read, write or data)"));
    };
    SCOPES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text.trim()))
        .map(|&(_, s)| s)
        .ok_or_else(|| {
            ConfigError::new(
                key,
                format!("unknown scope {text:?}; expected one of: read, write, data"),
            )
        })
}

fn name(key: &str, raw: Option<&str>) -> Result<String> {
    match raw.map(str::trim) {
        None | Some("") => Err(ConfigError::new(key, "is required")),
        Some(n) if n.chars().any(char::is_control) || n.chars().count() > 64 => {
            Err(ConfigError::new(
                key,
                "must be at most 64 characters, without control characters",
            ))
        }
        Some(n) => Ok(n.to_owned()),
    }
}

fn token(at: &str, raw: &RawToken) -> Result<Token> {
    let sha_key = format!("{at}.sha256");
    let Some(sha) = &raw.sha256 else {
        return Err(ConfigError::new(sha_key, "is required"));
    };
    Ok(Token {
        name: name(&format!("{at}.name"), raw.name.as_deref())?,
        sha256: parse_digest(&sha_key, sha)?,
        scope: scope(&format!("{at}.scope"), raw.scope.as_deref())?,
    })
}

fn client(at: &str, raw: &RawClient) -> Result<ClientIdentity> {
    Ok(ClientIdentity {
        subject: name(&format!("{at}.subject"), raw.subject.as_deref())?,
        scope: scope(&format!("{at}.scope"), raw.scope.as_deref())?,
    })
}

/// A tokens file: a YAML list of `{name, sha256, scope}`, or a mapping with
/// such a list under `tokens`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokensFile {
    List(Vec<RawToken>),
    Wrapped { tokens: Vec<RawToken> },
}

fn tokens_file(path: &Path) -> Result<Vec<Token>> {
    let key = "limits.security.tokens_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let parsed: TokensFile = yaml_serde::from_str(&text).map_err(|e| {
        ConfigError::new(
            key,
            format!(
                "{}: expected a list of tokens, each {{name, sha256, scope}}: {e}",
                path.display()
            ),
        )
    })?;
    let list = match parsed {
        TokensFile::List(l) | TokensFile::Wrapped { tokens: l } => l,
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| token(&format!("{key} ({})[{i}]", path.display()), t))
        .collect()
}
