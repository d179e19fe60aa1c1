//! The cluster's credentials in its database: the CA, the certificate last issued to each
//! node, the fingerprints of removed nodes' certificates, and tokens, stored hashed.
//!
//! Hashing and signing happen at the edge (`vigil-tls`); here are the records, the rules for
//! a token's use (expiry, use count, kind), and the token strings' format.
//!
//! - A join token is `vj1.ID.SECRET.CAHASH` (`CAHASH` is the hex SHA-256 of the CA's
//!   certificate: the joining node checks the cluster it talks to before it sends anything).
//! - An API token is `va1.ID.SECRET`.
//!
//! Only `sha256(SECRET)` is stored; the secret is shown once, when the token is made.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The CA's certificate (PEM). Its key is not in the database: the voters that run
/// resources keep it in their data dirs (`ca.key`), so a learner or a witness never holds
/// it (decision 0010).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCert {
    pub cert_pem: String,
    /// The key, in a database made before it moved out (until a leader holding it in its
    /// data dir forgets it here, `ForgetCaKey`). Never shown by the API, status or logs.
    #[serde(default, rename = "key_pem", skip_serializing_if = "Option::is_none")]
    pub legacy_key_pem: Option<String>,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CaCert { .. }")
    }
}

/// The certificate last issued to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// `sha256` hex of its DER.
    pub fingerprint: String,
    pub not_before_s: u64,
    pub not_after_s: u64,
    /// The one before (still accepted: a renewal reaches the other copies after the node
    /// uses its new certificate). The one before that is revoked at a renewal.
    #[serde(default)]
    pub previous: Option<String>,
    /// Issued for a join token, to a node not admitted yet: good for its join only.
    #[serde(default)]
    pub pending: bool,
    /// The hash of the CA that signed it (`sha256:HEX`; none in records made before CA
    /// rotation).
    #[serde(default)]
    pub issuer: Option<String>,
}

/// A CA rotation under way: every node trusts both CAs, is given a certificate from the new
/// one, and then the old one is dropped (`FinishCaRotation`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The new CA (its key, like the current one's, is in the holders' data dirs).
    pub ca: CaCert,
    /// Its hash (`sha256:HEX`).
    pub hash: String,
    pub since_s: u64,
}

/// Whether a certificate (one the CA signed, of this cluster) may speak for its node as this
/// copy knows it; `joining`: for its own join (a pending certificate is good for that only).
pub fn judge(sec: &Security, node: &str, fingerprint: &str, joining: bool) -> Result<(), String> {
    if sec.revoked.contains(fingerprint) {
        return Err(format!(
            "node {node} was removed from this cluster, or its certificate replaced; its certificate is revoked"
        ));
    }
    let Some(rec) = sec.certs.get(node) else {
        // This copy has not heard of the node yet (it lags): it cannot tell, and refusing
        // would keep it from catching up if that node leads.
        return Ok(());
    };
    if rec.fingerprint != fingerprint && rec.previous.as_deref() != Some(fingerprint) {
        return Err(format!(
            "certificate {fingerprint} is not one this cluster issued to node {node} last (it was replaced)"
        ));
    }
    if rec.pending && !joining {
        return Err(format!(
            "node {node} has a certificate for its join but has not joined"
        ));
    }
    Ok(())
}

/// What an API token may do; each role may do everything of the roles before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads status, the log, types and certificates.
    Viewer,
    /// Also brings groups and resources online and offline, moves them, drains and resumes
    /// nodes, and fails resources.
    Operator,
    /// Everything, above all what makes a node run code of the caller's choosing (resources
    /// and their parameters, plugins) and managing tokens.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role {s:?} is not one of admin, operator, viewer")),
        }
    }
}

/// A token's purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "role")]
pub enum TokenKind {
    /// Admits one new node per use.
    Join,
    /// Authenticates API calls with a role.
    Api(Role),
}

/// A stored token (its secret only as a hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    /// An operator's label for it.
    #[serde(default)]
    pub name: String,
    pub kind: TokenKind,
    /// `sha256` hex of the secret.
    pub hash: String,
    pub created_s: u64,
    /// Unix seconds after which it is refused.
    pub expires_s: Option<u64>,
    /// Uses left (a join token's); `None`: unlimited.
    pub uses_left: Option<u32>,
}

/// The security part of the cluster database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    pub ca: Option<CaCert>,
    /// A CA rotation under way.
    #[serde(default)]
    pub rotation: Option<Rotation>,
    /// The certificate last issued to each node.
    #[serde(default)]
    pub certs: BTreeMap<String, CertRecord>,
    /// Fingerprints of certificates of removed nodes: refused though they have not expired.
    #[serde(default)]
    pub revoked: BTreeSet<String>,
    #[serde(default)]
    pub tokens: BTreeMap<String, Token>,
}

/// Why a token was refused: the words an operator sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    Malformed(String),
    Unknown(String),
    Expired { id: String, at_s: u64 },
    UsedUp(String),
    WrongKind { id: String, want: &'static str },
    WrongSecret(String),
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRefusal::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenRefusal::Unknown(id) => write!(
                f,
                "unknown token {id} (never made in this cluster, or revoked)"
            ),
            TokenRefusal::Expired { id, at_s } => {
                write!(f, "token {id} expired (at Unix time {at_s})")
            }
            TokenRefusal::UsedUp(id) => write!(f, "token {id} is used up"),
            TokenRefusal::WrongKind { id, want } => {
                write!(f, "token {id} is not {want}")
            }
            TokenRefusal::WrongSecret(id) => {
                write!(f, "token {id}: wrong secret")
            }
        }
    }
}

/// A token string taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenParts {
    pub id: String,
    pub secret: String,
    /// A join token's CA hash (`sha256:HEX`).
    pub ca_hash: Option<String>,
}

fn hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Length of a token id and of its secret, in hex digits.
pub const ID_HEX: usize = 16;
pub const SECRET_HEX: usize = 32;

/// Takes a join token (`vj1.ID.SECRET.CAHASH`) apart.
pub fn parse_join_token(s: &str) -> Result<TokenParts, TokenRefusal> {
    let parts: Vec<&str> = s.trim().split('.').collect();
    match parts.as_slice() {
        ["vj1", id, secret, hash]
            if hex_of_len(id, ID_HEX) && hex_of_len(secret, SECRET_HEX) && hex_of_len(hash, 64) =>
        {
            Ok(TokenParts {
                id: id.to_string(),
                secret: secret.to_string(),
                ca_hash: Some(format!("sha256:{hash}")),
            })
        }
        ["va1", ..] => Err(TokenRefusal::Malformed(
            "this is an API token (va1.…), not a join token (vj1.…)".to_string(),
        )),
        _ => Err(TokenRefusal::Malformed(format!(
            "a join token reads vj1.<{ID_HEX} hex>.<{SECRET_HEX} hex>.<64 hex>, as `vigil token create --join` prints it"
        ))),
    }
}

/// Takes an API token (`va1.ID.SECRET`) apart.
pub fn parse_api_token(s: &str) -> Result<TokenParts, TokenRefusal> {
    let parts: Vec<&str> = s.trim().split('.').collect();
    match parts.as_slice() {
        ["va1", id, secret] if hex_of_len(id, ID_HEX) && hex_of_len(secret, SECRET_HEX) => {
            Ok(TokenParts {
                id: id.to_string(),
                secret: secret.to_string(),
                ca_hash: None,
            })
        }
        ["vj1", ..] => Err(TokenRefusal::Malformed(
            "this is a join token (vj1.…), not an API token (va1.…)".to_string(),
        )),
        _ => Err(TokenRefusal::Malformed(format!(
            "an API token reads va1.<{ID_HEX} hex>.<{SECRET_HEX} hex>, as `vigil token create --role …` prints it"
        ))),
    }
}

/// The token string for `id` and `secret` (and a join token's CA hash, `sha256:HEX`).
pub fn token_string(kind: TokenKind, id: &str, secret: &str, ca_hash: &str) -> String {
    match kind {
        TokenKind::Join => format!(
            "vj1.{id}.{secret}.{}",
            ca_hash.strip_prefix("sha256:").unwrap_or(ca_hash)
        ),
        TokenKind::Api(_) => format!("va1.{id}.{secret}"),
    }
}

/// Equal strings, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Security {
    /// The stored token `id` if `secret_hash` is its secret's hash, it is of `kind` (any
    /// API role when `kind` is an API kind), and it may be used at `now_s`.
    pub fn check(
        &self,
        id: &str,
        secret_hash: &str,
        join: bool,
        now_s: u64,
    ) -> Result<&Token, TokenRefusal> {
        let t = self
            .tokens
            .get(id)
            .ok_or_else(|| TokenRefusal::Unknown(id.to_string()))?;
        if !same(&t.hash, secret_hash) {
            return Err(TokenRefusal::WrongSecret(id.to_string()));
        }
        match (t.kind, join) {
            (TokenKind::Join, false) => {
                return Err(TokenRefusal::WrongKind {
                    id: id.to_string(),
                    want: "an API token",
                });
            }
            (TokenKind::Api(_), true) => {
                return Err(TokenRefusal::WrongKind {
                    id: id.to_string(),
                    want: "a join token",
                });
            }
            _ => {}
        }
        if let Some(at_s) = t.expires_s.filter(|e| now_s >= *e) {
            return Err(TokenRefusal::Expired {
                id: id.to_string(),
                at_s,
            });
        }
        if t.uses_left == Some(0) {
            return Err(TokenRefusal::UsedUp(id.to_string()));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(kind: TokenKind, expires_s: Option<u64>, uses_left: Option<u32>) -> Security {
        let mut s = Security::default();
        s.tokens.insert(
            "t".into(),
            Token {
                id: "t".into(),
                name: String::new(),
                kind,
                hash: "h".into(),
                created_s: 0,
                expires_s,
                uses_left,
            },
        );
        s
    }

    #[test]
    fn each_refusal_says_which_it_is() {
        let s = token(TokenKind::Join, Some(100), Some(0));
        assert_eq!(
            s.check("x", "h", true, 0),
            Err(TokenRefusal::Unknown("x".into()))
        );
        assert_eq!(
            s.check("t", "g", true, 0),
            Err(TokenRefusal::WrongSecret("t".into()))
        );
        assert!(matches!(
            s.check("t", "h", true, 100),
            Err(TokenRefusal::Expired { at_s: 100, .. })
        ));
        assert_eq!(
            s.check("t", "h", true, 99),
            Err(TokenRefusal::UsedUp("t".into()))
        );
        assert!(matches!(
            s.check("t", "h", false, 0),
            Err(TokenRefusal::WrongKind { .. })
        ));
        let api = token(TokenKind::Api(Role::Viewer), None, None);
        assert!(api.check("t", "h", false, u64::MAX).is_ok());
    }

    #[test]
    fn token_strings_round_trip_and_bad_ones_are_named() {
        let (id, secret, hash) = ("0".repeat(16), "a".repeat(32), "f".repeat(64));
        let join = token_string(TokenKind::Join, &id, &secret, &format!("sha256:{hash}"));
        let parts = parse_join_token(&join).unwrap();
        assert_eq!(parts.ca_hash.unwrap(), format!("sha256:{hash}"));
        let api = token_string(TokenKind::Api(Role::Admin), &id, &secret, "");
        assert_eq!(parse_api_token(&api).unwrap().secret, secret);
        assert!(matches!(
            parse_join_token(&api),
            Err(TokenRefusal::Malformed(m)) if m.contains("API token")
        ));
        assert!(matches!(
            parse_api_token("va1.xyz"),
            Err(TokenRefusal::Malformed(_))
        ));
    }

    #[test]
    fn a_ca_key_kept_in_an_older_database_is_read_then_forgotten_and_never_written_back() {
        let old = r#"{"cert_pem":"CERT","key_pem":"KEY"}"#;
        let ca: CaCert = serde_json::from_str(old).unwrap();
        assert_eq!(ca.legacy_key_pem.as_deref(), Some("KEY"));
        assert!(!format!("{ca:?}").contains("KEY"), "Debug hides it");
        let mut state = crate::model::ClusterState::default();
        state.security.ca = Some(ca);
        crate::command::apply(&mut state, &crate::command::Command::ForgetCaKey).unwrap();
        let ca = state.security.ca.clone().unwrap();
        assert_eq!(ca.legacy_key_pem, None);
        assert_eq!(ca.cert_pem, "CERT");
        let text = serde_json::to_string(&ca).unwrap();
        assert!(!text.contains("key_pem"), "{text}");
    }
}
