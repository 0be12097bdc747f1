//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): each
//! delivery carries `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature`, a space-separated list of `v1,<base64>`, each the
//! HMAC-SHA256 of `<id>.<timestamp>.<body>` under one secret. During a
//! rotation both the new and the previous secret sign, so a receiver that
//! knows either accepts the delivery.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The prefix of a secret's text.
pub const PREFIX: &str = "whsec_";
/// Shortest and longest key, in bytes (the specification asks for 24 to
/// 64).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A signing key, parsed from `whsec_<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// Reads `whsec_<base64 of 24 to 64 bytes>`; the error says what is
    /// wrong without repeating the text.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let Some(encoded) = text.strip_prefix(PREFIX) else {
            return Err(format!("a secret starts with `{PREFIX}`"));
        };
        let key = STANDARD
            .decode(encoded)
            .map_err(|error| format!("what follows `{PREFIX}` is not base64: {error}"))?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "a secret holds {} to {} bytes, this one {}",
                KEY_BYTES.start(),
                KEY_BYTES.end(),
                key.len()
            ));
        }
        Ok(Secret(key))
    }

    /// `v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            unreachable!("HMAC accepts keys of every length")
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per secret, in order.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_the_specification_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn signs_with_every_secret() {
        let first = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let second =
            Secret::parse(&format!("{PREFIX}{}", STANDARD.encode([7u8; 32]))).expect("secret");
        let header = signature_header(&[first.clone(), second.clone()], "msg_1", 5, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [
                first.sign("msg_1", 5, b"{}"),
                second.sign("msg_1", 5, b"{}")
            ]
        );
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn refuses_what_is_not_a_secret() {
        for (text, says) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with"),
            ("whsec_not base64!", "not base64"),
            ("whsec_c2hvcnQ=", "24 to 64 bytes"),
        ] {
            let error = Secret::parse(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
            assert!(
                !error.contains(text),
                "{text}: the error repeats the secret"
            );
        }
    }
}
