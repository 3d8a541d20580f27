//! Key pairs: import (ssh and x509), generation when no key is given
//! (before 2.92: an Ed25519 SSH key, or a self-signed Ed25519 X.509
//! certificate), per user; admins reach other users' key pairs (2.10).

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::app::App;
use crate::context::Context;
use crate::db::Timestamp;
use crate::db::flavors::{self as store, KeyPair};
use crate::db::quotas;
use crate::error::{Error, Kind, Result};
use crate::policy::Target;

/// A created key pair, with its private key when Mica generated it.
#[derive(Debug, Clone)]
pub struct Created {
    /// The stored key pair.
    pub keypair: KeyPair,
    /// PEM, only when generated.
    pub private_key: Option<String>,
}

fn invalid(reason: &str) -> Error {
    Error::bad_request(format!("Keypair data is invalid: {reason}"))
}

/// Nova's name rules: 1–255 characters of letters, digits, `_`, `-`, space
/// (2.92 also allows `@` and `.`).
pub fn check_name(name: &str, at_and_dot: bool) -> Result<()> {
    if name.is_empty() || name.chars().count() > 255 {
        return Err(invalid(
            "Keypair name must be string and between 1 and 255 characters long",
        ));
    }
    let ok = name.chars().all(|c| {
        c.is_ascii_alphanumeric() || "_- ".contains(c) || (at_and_dot && "@.".contains(c))
    });
    if !ok {
        return Err(invalid("Keypair name contains unsafe characters"));
    }
    Ok(())
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn read_ssh_string(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let s = buf.get(4..4 + len)?;
    Some((s, &buf[4 + len..]))
}

const SSH_TYPES: [&str; 9] = [
    "ssh-rsa",
    "ssh-dss",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed448",
];

/// The MD5 fingerprint of an OpenSSH public key line (`type base64 [comment]`),
/// after checking the key's blob names its type.
pub fn ssh_fingerprint(public_key: &str) -> Result<String> {
    use base64::Engine;
    use md5::Digest;
    let bad = || invalid("failed to generate fingerprint");
    let mut parts = public_key.split_whitespace();
    let kind = parts.next().ok_or_else(bad)?;
    let data = parts.next().ok_or_else(bad)?;
    if !SSH_TYPES.contains(&kind) {
        return Err(bad());
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| bad())?;
    let (name, rest) = read_ssh_string(&blob).ok_or_else(bad)?;
    if name != kind.as_bytes() || rest.is_empty() {
        return Err(bad());
    }
    Ok(colon_hex(&md5::Md5::digest(&blob)))
}

fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = pem[start..].find(&end)? + start;
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The SHA-1 fingerprint of a PEM certificate (Nova's x509 key pairs).
pub fn x509_fingerprint(pem: &str) -> Result<String> {
    let der = pem_body(pem, "CERTIFICATE")
        .filter(|d| d.first() == Some(&0x30) && d.len() > 16)
        .ok_or_else(|| invalid("failed to generate X509 fingerprint"))?;
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    Ok(colon_hex(digest.as_ref()))
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn wrap(b64: &str, width: usize) -> String {
    b64.as_bytes()
        .chunks(width)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A new Ed25519 key: (seed, public key, PKCS#8 document).
fn new_ed25519() -> Result<([u8; 32], [u8; 32], Vec<u8>)> {
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| Error::internal("generating a key pair", "the random source failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| Error::internal("generating a key pair", "bad PKCS#8 document"))?;
    // ring's PKCS#8 v2 template: 16 bytes of header, then the seed.
    const HEADER: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let bytes = doc.as_ref();
    if bytes.get(..16) != Some(&HEADER[..]) || bytes.len() < 48 {
        return Err(Error::internal(
            "generating a key pair",
            "unexpected PKCS#8 layout",
        ));
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&bytes[16..48]);
    let mut public = [0u8; 32];
    public.copy_from_slice(pair.public_key().as_ref());
    Ok((seed, public, bytes.to_vec()))
}

/// Generates an SSH key pair: (OpenSSH public key line, OpenSSH private key PEM).
pub fn generate_ssh(comment: &str) -> Result<(String, String)> {
    use base64::Engine;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let (seed, public, _) = new_ed25519()?;
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-ed25519");
    put_string(&mut blob, &public);
    let public_line = format!("ssh-ed25519 {} {comment}", b64.encode(&blob));
    // openssh-key-v1, unencrypted.
    let mut check = [0u8; 4];
    getrandom::fill(&mut check).expect("the OS random source works");
    let mut private = Vec::new();
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, b"ssh-ed25519");
    put_string(&mut private, &public);
    let mut secret = Vec::with_capacity(64);
    secret.extend_from_slice(&seed);
    secret.extend_from_slice(&public);
    put_string(&mut private, &secret);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut file = Vec::new();
    file.extend_from_slice(b"openssh-key-v1\0");
    put_string(&mut file, b"none");
    put_string(&mut file, b"none");
    put_string(&mut file, b"");
    file.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut file, &blob);
    put_string(&mut file, &private);
    let pem = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        wrap(&b64.encode(&file), 70)
    );
    Ok((public_line, pem))
}

// Minimal DER for a self-signed certificate.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

/// Generates an X.509 key pair: (certificate PEM, PKCS#8 private key PEM),
/// self-signed with Ed25519, subject CN = `common_name`, valid ten years.
pub fn generate_x509(common_name: &str) -> Result<(String, String)> {
    use base64::Engine;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let (seed, public, pkcs8) = new_ed25519()?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| Error::internal("generating a certificate", "bad PKCS#8 document"))?;
    let ed25519 = seq(&[der(0x06, &[0x2b, 0x65, 0x70])]);
    let name = seq(&[der(
        0x31,
        &seq(&[
            der(0x06, &[0x55, 0x04, 0x03]),
            der(0x0c, common_name.as_bytes()),
        ]),
    )]);
    let now = chrono::Utc::now();
    let later = now + chrono::Duration::days(3650);
    let utc = |t: chrono::DateTime<chrono::Utc>| {
        der(0x17, t.format("%y%m%d%H%M%SZ").to_string().as_bytes())
    };
    let mut serial = [0u8; 8];
    getrandom::fill(&mut serial).expect("the OS random source works");
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let mut key_bits = vec![0u8];
    key_bits.extend_from_slice(&public);
    let tbs = seq(&[
        der(0xa0, &der(0x02, &[2])),
        der(0x02, &serial),
        ed25519.clone(),
        name.clone(),
        seq(&[utc(now), utc(later)]),
        name,
        seq(&[ed25519.clone(), der(0x03, &key_bits)]),
    ]);
    let sig = pair.sign(&tbs);
    let mut sig_bits = vec![0u8];
    sig_bits.extend_from_slice(sig.as_ref());
    let cert = seq(&[tbs, ed25519, der(0x03, &sig_bits)]);
    let cert_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        wrap(&b64.encode(&cert), 64)
    );
    // PKCS#8 v1 (RFC 8410), the form OpenSSL reads and writes.
    let mut v1 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    v1.extend_from_slice(&seed);
    let key_pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        wrap(&b64.encode(&v1), 64)
    );
    Ok((cert_pem, key_pem))
}

/// Whose key pairs a request is about: the caller's own, or (admins, 2.10)
/// another user's.
pub fn owner<'a>(app: &App, ctx: &'a Context, user_id: Option<&'a str>) -> Result<&'a str> {
    let target = user_id.unwrap_or(ctx.user_id.as_str());
    app.policy
        .enforce("os_compute_api:os-keypairs", ctx, Target::user(target))?;
    Ok(target)
}

fn not_found(name: &str, user: &str) -> Error {
    Error::not_found(format!("Keypair {name} not found for user {user}"))
}

/// Creates (imports or generates) a key pair for `user_id`.
pub async fn create(
    app: &App,
    ctx: &Context,
    user_id: Option<&str>,
    name: &str,
    kind: &str,
    public_key: Option<&str>,
    at_and_dot: bool,
) -> Result<Created> {
    let user = owner(app, ctx, user_id)?.to_owned();
    check_name(name, at_and_dot)?;
    let (public_key, fingerprint, private_key) = match (kind, public_key) {
        ("ssh", Some(k)) => {
            let k = k.trim();
            (k.to_owned(), ssh_fingerprint(k)?, None)
        }
        ("x509", Some(k)) => (k.to_owned(), x509_fingerprint(k)?, None),
        ("ssh", None) => {
            let (public, private) = generate_ssh("Generated-by-Mica")?;
            let fp = ssh_fingerprint(&public)?;
            (public, fp, Some(private))
        }
        ("x509", None) => {
            let (cert, private) = generate_x509(&user)?;
            let fp = x509_fingerprint(&cert)?;
            (cert, fp, Some(private))
        }
        _ => {
            return Err(Error::bad_request(format!(
                "Invalid input for field/attribute type. Value: {kind}. '{kind}' is not one of ['ssh', 'x509']"
            )));
        }
    };
    let mut kp = KeyPair {
        id: 0,
        user_id: user.clone(),
        name: name.to_owned(),
        kind: kind.to_owned(),
        fingerprint,
        public_key,
        created_at: Timestamp::now(),
    };
    let project = ctx.project_id().unwrap_or_default().to_owned();
    let lock_key = format!("user:{user}");
    let result = app
        .db
        .retry(|| async {
            let mut tx = app.db.begin().await?;
            quotas::lock_project(&mut tx, &lock_key).await?;
            super::quotas::check_one_more(&mut tx, app, &project, &user, "key_pairs").await?;
            if store::get_key_pair(&mut *tx, &user, name).await?.is_some() {
                return Err(Error::conflict(format!(
                    "Key pair '{name}' already exists."
                )));
            }
            let id = store::insert_key_pair(&mut *tx, &kp).await?;
            tx.commit().await?;
            Ok(id)
        })
        .await;
    kp.id = match result {
        Ok(id) => id,
        Err(e) if e.is(Kind::Conflict) => {
            return Err(Error::conflict(format!(
                "Key pair '{name}' already exists."
            )));
        }
        Err(e) => return Err(e),
    };
    Ok(Created {
        keypair: kp,
        private_key,
    })
}

/// A key pair by name.
pub async fn get(app: &App, ctx: &Context, user_id: Option<&str>, name: &str) -> Result<KeyPair> {
    let user = owner(app, ctx, user_id)?;
    store::get_key_pair(app.db.pool(), user, name)
        .await?
        .ok_or_else(|| not_found(name, user))
}

/// A user's key pairs by name, paged (2.35).
pub async fn list(
    app: &App,
    ctx: &Context,
    user_id: Option<&str>,
    marker: Option<&str>,
    limit: Option<i64>,
) -> Result<Vec<KeyPair>> {
    let user = owner(app, ctx, user_id)?;
    if let Some(m) = marker
        && store::get_key_pair(app.db.pool(), user, m).await?.is_none()
    {
        return Err(Error::bad_request(format!("marker [{m}] not found")));
    }
    let limit = limit.map(|l| l.min(app.config.compute.max_limit));
    store::list_key_pairs(app.db.pool(), user, marker, limit).await
}

/// Deletes a key pair.
pub async fn delete(app: &App, ctx: &Context, user_id: Option<&str>, name: &str) -> Result<()> {
    let user = owner(app, ctx, user_id)?;
    if !store::delete_key_pair(app.db.pool(), user, name).await? {
        return Err(not_found(name, user));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_fingerprinted() {
        let (public, private) = generate_ssh("test").unwrap();
        assert!(
            public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            "{public}"
        );
        let fp = ssh_fingerprint(&public).unwrap();
        assert_eq!(fp.len(), 47);
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA"));
        let (cert, key) = generate_x509("alice").unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("BEGIN PRIVATE KEY"));
        assert_eq!(x509_fingerprint(&cert).unwrap().len(), 59);
    }

    /// The generated keys are real: OpenSSH derives the same public key from
    /// the private one, and OpenSSL parses and verifies the certificate.
    #[test]
    fn generated_keys_are_accepted_by_openssh_and_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let (public, private) = generate_ssh("test").unwrap();
        let key = dir.path().join("id");
        std::fs::write(&key, &private).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&key)
            .output()
            .expect("ssh-keygen is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let derived = String::from_utf8(out.stdout).unwrap();
        let field = |s: &str| s.split_whitespace().nth(1).unwrap().to_owned();
        assert_eq!(field(&derived), field(&public));
        let (cert, pkey) = generate_x509("alice").unwrap();
        let c = dir.path().join("cert.pem");
        std::fs::write(&c, &cert).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&c)
            .arg(&c)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let k = dir.path().join("key.pem");
        std::fs::write(&k, &pkey).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(&k)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn imported_keys_are_checked() {
        // A real Ed25519 public key.
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ3a9eVfAoTvXl0sO4nQOqnk2u3y8b3vRlq3s3fVhhB me@host";
        assert!(ssh_fingerprint(k).is_ok());
        assert!(
            ssh_fingerprint(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGZ3a9eVfAoTvXl0sO4nQOqnk2u3y8b3vRlq3s3fVhhB"
            )
            .is_err(),
            "type mismatch"
        );
        assert!(ssh_fingerprint("ssh-ed25519 notbase64!").is_err());
        assert!(ssh_fingerprint("garbage").is_err());
        assert!(
            x509_fingerprint("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .is_err()
        );
        assert!(check_name("k1", false).is_ok());
        assert!(check_name("me@host", false).is_err());
        assert!(check_name("me@host.x", true).is_ok());
        assert!(check_name("", false).is_err());
    }
}
