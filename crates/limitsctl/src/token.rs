//! `limitsctl token new`: a random bearer token, shown once, with the
//! SHA-256 limitsd is configured with (it never holds the token itself).

use rand::TryRngCore;
use rand::rngs::OsRng;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::{Output, Scope, TokenArgs};
use crate::error::Error;

pub fn new(args: &TokenArgs, output: Output) -> Result<String, Error> {
    // 256 bits from the operating system's generator, as hex (what
    // `openssl rand -hex 32` makes).
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Local(format!("no randomness from the system: {e}")))?;
    let token = hex::encode(bytes);
    let sha256 = hex::encode(Sha256::digest(token.as_bytes()));
    let scope = match args.scope {
        Scope::Read => "read",
        Scope::Write => "write",
        Scope::Data => "data",
    };
    let entry = format!(
        "- {{ name: {}, sha256: \"{sha256}\", scope: {scope} }}",
        yaml_scalar(&args.name)
    );
    // The shortest way to turn the admin API on: limitsd takes one `write`
    // token named admin from its environment.
    let env = (args.scope == Scope::Write)
        .then(|| format!("MERCATOR_LIMITS_SECURITY_ADMIN_TOKEN_SHA256={sha256}"));
    Ok(match output {
        Output::Json => crate::pretty(&json!({
            "token": token,
            "sha256": sha256,
            "name": args.name,
            "scope": scope,
            "config": format!("limits:\n  security:\n    tokens:\n      {entry}\n"),
            "env": env,
        })),
        Output::Table => {
            let mut out = format!(
                "Token (shown once; limitsd keeps only its SHA-256):\n\
                 \n  {token}\n\
                 \nSHA-256:\n\
                 \n  {sha256}\n\
                 \nIn limitsd's config (or the file of limits.security.tokens_file):\n\
                 \n  limits:\n    security:\n      tokens:\n        {entry}\n"
            );
            if let Some(env) = env {
                out.push_str(&format!(
                    "\nOr, as the one `write` token (named admin), in limitsd's environment:\n\
                     \n  {env}\n"
                ));
            }
            out.push_str("\nThen: export LIMITSD_TOKEN=<the token>\n");
            out
        }
    })
}

/// The name as a YAML scalar: plain when that reads back the same, quoted
/// otherwise.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && !s.starts_with(['-', '.', '@'])
        && !matches!(
            s,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_names_yaml_would_misread() {
        assert_eq!(yaml_scalar("ops"), "ops");
        assert_eq!(yaml_scalar("ops team"), "\"ops team\"");
        assert_eq!(yaml_scalar("true"), "\"true\"");
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
    }
}
