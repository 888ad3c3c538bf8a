//! LongPoll session tokens: `plp.<node>.<session>.<signature>`.
//!
//! - `node` is the id of the node that holds the session, in clear, so any node can route a
//!   request to the holder without being able to verify the token itself;
//! - `session` is 16 random bytes, base64url without padding: the session's key on its node;
//! - `signature` is the first 16 bytes of HMAC-SHA256 over `plp.<node>.<session>` with a key
//!   only the holder knows (random per process), base64url. The holder checks it before it
//!   looks the session up, so a token is never accepted by a node (or a process) that did
//!   not issue it.
//!
//! Node ids may contain `.`; the other two parts cannot, so a token is split from the right.
//! Every character is unreserved in URLs, so phoenix.js's `encodeURIComponent` leaves the
//! token as it is.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every session token starts with (how a LongPoll token is told apart from an
/// application's own `token` connect param, which phoenix.js sends under the same name).
pub const PREFIX: &str = "plp.";

/// A session's key on its node.
pub type SessionId = [u8; 16];

/// A token taken apart, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The node that holds the session.
    pub node: &'a str,
    /// The session part, as sent.
    session: &'a str,
    /// The signature part, as sent.
    signature: &'a str,
}

impl<'a> Parsed<'a> {
    /// Splits a token; `None` if it does not have the shape of one.
    pub fn parse(token: &'a str) -> Option<Parsed<'a>> {
        let rest = token.strip_prefix(PREFIX)?;
        let (rest, signature) = rest.rsplit_once('.')?;
        let (node, session) = rest.rsplit_once('.')?;
        if node.is_empty() || session.is_empty() || signature.is_empty() {
            return None;
        }
        Some(Parsed {
            node,
            session,
            signature,
        })
    }
}

/// Signs and verifies this node's tokens.
pub struct Signer {
    node: String,
    key: [u8; 32],
}

fn random_16() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

impl Signer {
    /// A signer for node `node` with a fresh random key.
    pub fn new(node: &str) -> Signer {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&random_16());
        key[16..].copy_from_slice(&random_16());
        Signer {
            node: node.to_owned(),
            key,
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn mac(&self, node: &str, session: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts any key length"),
        };
        mac.update(PREFIX.as_bytes());
        mac.update(node.as_bytes());
        mac.update(b".");
        mac.update(session.as_bytes());
        mac
    }

    /// A new session id and its token.
    pub fn issue(&self) -> (SessionId, String) {
        let id = random_16();
        let session = URL_SAFE_NO_PAD.encode(id);
        let tag = self.mac(&self.node, &session).finalize().into_bytes();
        let signature = URL_SAFE_NO_PAD.encode(&tag[..16]);
        (id, format!("{PREFIX}{}.{session}.{signature}", self.node))
    }

    /// The session a token names, if this node issued it and its signature holds.
    pub fn verify(&self, token: &Parsed<'_>) -> Option<SessionId> {
        if token.node != self.node {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(token.signature).ok()?;
        if signature.len() != 16 {
            return None;
        }
        // `verify_truncated_left` compares in constant time.
        self.mac(token.node, token.session)
            .verify_truncated_left(&signature)
            .ok()?;
        let id = URL_SAFE_NO_PAD.decode(token.session).ok()?;
        id.try_into().ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_name_their_node() {
        let signer = Signer::new("node-a.eu-1");
        let (id, token) = signer.issue();
        assert!(token.starts_with("plp.node-a.eu-1."));
        let parsed = Parsed::parse(&token).unwrap();
        assert_eq!(parsed.node, "node-a.eu-1");
        assert_eq!(signer.verify(&parsed), Some(id));
        // Unreserved URL characters only.
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        );
    }

    #[test]
    fn tampered_foreign_and_malformed_tokens_are_refused() {
        let signer = Signer::new("a");
        let (_, token) = signer.issue();
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut bad = sig.to_owned();
        bad.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
        let tampered = format!("{head}.{bad}");
        assert_eq!(signer.verify(&Parsed::parse(&tampered).unwrap()), None);
        // Another process with the same node id has another key.
        assert_eq!(
            Signer::new("a").verify(&Parsed::parse(&token).unwrap()),
            None
        );
        // A token naming another node is not this node's to verify.
        let other = Signer::new("b").issue().1;
        assert_eq!(signer.verify(&Parsed::parse(&other).unwrap()), None);
        for malformed in [
            "",
            "plp.",
            "plp.a",
            "plp.a.b",
            "plp..b.c",
            "eyJhbGciOi.x.y",
            "plp.a.b.",
        ] {
            assert_eq!(Parsed::parse(malformed), None, "{malformed:?}");
        }
    }
}
