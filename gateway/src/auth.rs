//! Who is asking: bearer JWTs with a role.
//!
//! A token's claims are `sub`, `role` (`shopper` or `operator`), `iat` and `exp`, all required.
//! A shopper's `sub` is their customer id (a UUID): the orders they place are theirs, and the
//! only ones they can read or cancel. An operator's `sub` names the person or tool.
//!
//! The gateway verifies tokens with one key from its settings: an HS256 secret
//! (`GATEWAY_JWT_SECRET`), or a public key (`GATEWAY_JWT_PUBLIC_KEY`, PEM) whose kind picks the
//! algorithms: RSA (RS256/384/512, PS256/384/512), EC (ES256/384) or Ed25519 (EdDSA). A token
//! signed with another algorithm is refused, whatever its header says. Expiry is checked with
//! 60 seconds of leeway for clocks that disagree.
//!
//! [`mint`] signs an HS256 token, for local use and tests (`chorus token`): in production an
//! identity provider issues tokens and the gateway holds only its public key.

use std::time::Duration;

use events::values::CustomerId;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation, decode, encode,
};
use serde::{Deserialize, Serialize};

/// The role a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Shopper,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Shopper => "shopper",
            Role::Operator => "operator",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shopper" => Ok(Role::Shopper),
            "operator" => Ok(Role::Operator),
            other => Err(format!("{other:?} is not a role: shopper or operator")),
        }
    }
}

/// The claims of a Chorus token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
}

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
}

impl Principal {
    /// The shopper's customer id; `None` for an operator.
    pub fn customer_id(&self) -> Option<CustomerId> {
        match self.role {
            // Checked when the token was verified.
            Role::Shopper => self.subject.parse().ok(),
            Role::Operator => None,
        }
    }

    /// The key of its rate-limit bucket.
    pub fn bucket(&self) -> String {
        format!("{}:{}", self.role, self.subject)
    }
}

/// Why a token was refused (the text goes into the 401's detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is signed with an algorithm this gateway does not accept")]
    WrongAlgorithm,
    #[error("the token is not a valid JWT: {0}")]
    Malformed(String),
    #[error("a shopper's token must have a customer id (a UUID) as its subject")]
    ShopperWithoutCustomer,
    #[error("the token has an empty subject")]
    EmptySubject,
}

/// Verifies tokens with the gateway's key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    description: &'static str,
}

impl std::fmt::Debug for Verifier {
    /// The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("key", &self.description)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Verifies HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(
            DecodingKey::from_secret(secret),
            Validation::new(Algorithm::HS256),
            "HS256 secret",
        )
    }

    /// Verifies tokens signed with the private half of `pem` (an RSA, EC or Ed25519 public
    /// key).
    pub fn public_key_pem(pem: &str) -> anyhow::Result<Self> {
        let bytes = pem.trim().as_bytes();
        if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            return Ok(Self::new(
                key,
                Validation::new_for_family(AlgorithmFamily::Ed),
                "Ed25519 public key",
            ));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            return Ok(Self::new(
                key,
                Validation::new_for_family(AlgorithmFamily::Ec),
                "EC public key",
            ));
        }
        match DecodingKey::from_rsa_pem(bytes) {
            Ok(key) => Ok(Self::new(
                key,
                Validation::new_for_family(AlgorithmFamily::Rsa),
                "RSA public key",
            )),
            Err(e) => anyhow::bail!("not a PEM RSA, EC or Ed25519 public key ({e})"),
        }
    }

    fn new(key: DecodingKey, mut validation: Validation, description: &'static str) -> Self {
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        validation.leeway = 60;
        Self {
            key,
            validation,
            description,
        }
    }

    /// The principal of `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::WrongAlgorithm
                }
                _ => TokenError::Malformed(e.to_string()),
            })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(TokenError::EmptySubject);
        }
        if claims.role == Role::Shopper && claims.sub.parse::<CustomerId>().is_err() {
            return Err(TokenError::ShopperWithoutCustomer);
        }
        Ok(Principal {
            subject: claims.sub,
            role: claims.role,
        })
    }
}

/// An HS256 token for `subject` in `role`, valid for `ttl` from now, signed with `secret`.
pub fn mint(secret: &[u8], role: Role, subject: &str, ttl: Duration) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    mint_claims(
        secret,
        &Claims {
            sub: subject.to_owned(),
            role,
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
        },
    )
}

/// An HS256 token with exactly `claims` (an expired one, for a test).
pub fn mint_claims(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    if claims.role == Role::Shopper && claims.sub.parse::<CustomerId>().is_err() {
        anyhow::bail!(
            "a shopper's subject must be their customer id (a UUID), not {:?}",
            claims.sub
        );
    }
    if claims.sub.trim().is_empty() {
        anyhow::bail!("the subject must not be empty");
    }
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| anyhow::anyhow!("cannot sign the token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-local-secret-of-at-least-32-bytes!";

    #[test]
    fn a_minted_token_verifies_to_its_principal() {
        let customer = CustomerId::new().to_string();
        let token = mint(SECRET, Role::Shopper, &customer, Duration::from_secs(60)).unwrap();
        let principal = Verifier::hs256(SECRET).verify(&token).unwrap();
        assert_eq!(principal.role, Role::Shopper);
        assert_eq!(principal.subject, customer);
        assert_eq!(
            principal.customer_id().map(|c| c.to_string()),
            Some(customer)
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let verifier = Verifier::hs256(SECRET);
        let now = jsonwebtoken::get_current_timestamp();
        let expired = mint_claims(
            SECRET,
            &Claims {
                sub: "ops".into(),
                role: Role::Operator,
                iat: now - 7_200,
                exp: now - 3_600,
            },
        )
        .unwrap();
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
        let other = mint(
            b"another-secret-of-at-least-32-bytes!!",
            Role::Operator,
            "ops",
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(verifier.verify(&other), Err(TokenError::BadSignature));
        assert!(matches!(
            verifier.verify("not.a.jwt"),
            Err(TokenError::Malformed(_))
        ));
        assert!(mint(SECRET, Role::Shopper, "alice", Duration::from_secs(60)).is_err());
    }

    /// A throwaway Ed25519 key pair (openssl genpkey -algorithm ed25519), and another private
    /// key.
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGDS3jIogRGMpSiAaswcKbAyl2oWVbgvWMZMu9yOKqEp\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAXqGaA59DazEaJkEiEWIsxBHxEaRZGerwWmw7tODOjxM=\n-----END PUBLIC KEY-----\n";
    const ED_OTHER: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKoZg7POutFs5+1xECk8QELcTcJj8A+cIHJiThE+QEqw\n-----END PRIVATE KEY-----\n";

    fn ed_token(private: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "ops".into(),
            role: Role::Operator,
            iat: now,
            exp: now + 60,
        };
        let key = EncodingKey::from_ed_pem(private.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap()
    }

    #[test]
    fn a_public_key_verifies_its_own_signatures_only() {
        let verifier = Verifier::public_key_pem(ED_PUBLIC).unwrap();
        let principal = verifier.verify(&ed_token(ED_PRIVATE)).unwrap();
        assert_eq!(principal.role, Role::Operator);
        assert_eq!(
            verifier.verify(&ed_token(ED_OTHER)),
            Err(TokenError::BadSignature)
        );
        // An HS256 token signed with the public key as its secret (the classic confusion) is
        // refused: the algorithm is fixed by the key.
        let confused = mint(
            ED_PUBLIC.as_bytes(),
            Role::Operator,
            "ops",
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(verifier.verify(&confused), Err(TokenError::WrongAlgorithm));
    }

    #[test]
    fn a_public_key_that_is_not_one_is_refused() {
        assert!(
            Verifier::public_key_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }
}
