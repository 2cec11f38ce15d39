//! Layer keys (blake3) and OCI digests (sha256): validated strings, so nothing but hex
//! digits is ever joined to a path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::Error;

/// A layer's key: the blake3 digest of its uncompressed tar stream, as 64 lowercase hex
/// digits. It names the layer's directory `layers/<key>/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LayerKey(String);

impl LayerKey {
    /// The key as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key with its algorithm, `blake3:<hex>`.
    pub fn to_digest(&self) -> String {
        format!("blake3:{}", self.0)
    }

    pub(crate) fn from_hash(hash: &blake3::Hash) -> Self {
        LayerKey(hash.to_hex().to_string())
    }
}

impl FromStr for LayerKey {
    type Err = Error;

    /// Accepts `<hex>` or `blake3:<hex>`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let hex = s.strip_prefix("blake3:").unwrap_or(s);
        if is_lower_hex(hex, 64) {
            Ok(LayerKey(hex.to_owned()))
        } else {
            Err(Error::InvalidKey(s.to_owned()))
        }
    }
}

impl TryFrom<String> for LayerKey {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<LayerKey> for String {
    fn from(k: LayerKey) -> String {
        k.0
    }
}

impl fmt::Display for LayerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Formats a sha256 result as an OCI digest, `sha256:<hex>`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(bytes))
}

/// Checks an OCI digest and returns its hex part. Only sha256 is supported; anything
/// else is refused before it could become a path.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, Error> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if is_lower_hex(hex, 64) => Ok(hex),
        Some(("sha256", _)) | None => Err(Error::InvalidDigest(digest.to_owned())),
        Some((alg, _)) if !alg.is_empty() => Err(Error::UnsupportedDigest(digest.to_owned())),
        Some(_) => Err(Error::InvalidDigest(digest.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hex_only() {
        let hex = "a".repeat(64);
        assert_eq!(hex.parse::<LayerKey>().unwrap().as_str(), hex);
        assert_eq!(
            format!("blake3:{hex}")
                .parse::<LayerKey>()
                .unwrap()
                .as_str(),
            hex
        );
        for bad in [
            "",
            "../x",
            &"A".repeat(64),
            &"a".repeat(63),
            &format!("{hex}/"),
        ] {
            assert!(bad.parse::<LayerKey>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_are_sha256_hex() {
        let hex = "0".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{hex}")).unwrap(), hex);
        assert!(matches!(
            sha256_hex(&format!("sha512:{hex}")),
            Err(Error::UnsupportedDigest(_))
        ));
        for bad in [
            hex.clone(),
            format!("sha256:{hex}/.."),
            "sha256:".into(),
            format!(":{hex}"),
        ] {
            assert!(
                matches!(sha256_hex(&bad), Err(Error::InvalidDigest(_))),
                "{bad:?}"
            );
        }
    }
}
