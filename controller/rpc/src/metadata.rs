//! The metadata proxy's contract: how a compute host's proxy tells the
//! controller's metadata service which instance is asking.
//!
//! A guest reaches `169.254.169.254:80` on its own network; the proxy on its
//! compute host knows the instance from the network and source address the
//! request came from (never from anything the guest says), and forwards the
//! request with these headers, as Neutron's metadata proxy does for Nova:
//!
//! - [`INSTANCE_ID`]: the instance's UUID;
//! - [`TENANT_ID`]: its project;
//! - [`SIGNATURE`]: HMAC-SHA256 of the UUID under the secret the proxy and
//!   the service share, in lower-case hex;
//! - `X-Forwarded-For`: the guest's address (for logs).
//!
//! The service refuses a request whose signature is missing or wrong (403)
//! and answers only with the data of the instance it names.

use hmac::{KeyInit as _, Mac as _};

/// The instance's UUID.
pub const INSTANCE_ID: &str = "x-instance-id";
/// The instance's project.
pub const TENANT_ID: &str = "x-tenant-id";
/// HMAC-SHA256 of [`INSTANCE_ID`]'s value, lower-case hex.
pub const SIGNATURE: &str = "x-instance-id-signature";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(secret: &str, instance_id: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    m.update(instance_id.as_bytes());
    m
}

/// The signature of `instance_id` under `secret`.
pub fn sign(secret: &str, instance_id: &str) -> String {
    hex::encode(mac(secret, instance_id).finalize().into_bytes())
}

/// Whether `signature` is `instance_id`'s under `secret` (compared in
/// constant time; anything that is not 64 hex digits is wrong).
pub fn verify(secret: &str, instance_id: &str, signature: &str) -> bool {
    let Ok(bytes) = hex::decode(signature) else {
        return false;
    };
    mac(secret, instance_id).verify_slice(&bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_the_right_signature_verifies() {
        let id = "5c2e0d3a-1b2c-4d5e-8f90-123456789abc";
        let good = sign("s3cret", id);
        assert!(verify("s3cret", id, &good));
        assert!(verify("s3cret", id, &good.to_uppercase()));
        assert!(!verify("other", id, &good));
        assert!(!verify(
            "s3cret",
            "5c2e0d3a-1b2c-4d5e-8f90-123456789abd",
            &good
        ));
        assert!(!verify("s3cret", id, ""));
        assert!(!verify("s3cret", id, &good[..62]));
        assert!(!verify("s3cret", id, "zz"));
    }
}
