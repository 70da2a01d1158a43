//! Ed25519 public keys (seeds 000, 003): an account adds and removes keys;
//! `auth` with method `pubkey` asks for a challenge, then answers it with a
//! signature over [`signed_message`].

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use super::{Denied, LoggedIn, Outcome, Session};
use crate::proto::id::now_ms;
use crate::proto::request::Secret;
use crate::proto::{ErrorCode, Packet, reply};

/// Keys one account may hold.
pub const MAX_KEYS_PER_ACCOUNT: usize = 16;

/// A challenge handed out on this connection, answerable once.
pub struct Challenge {
    username: String,
    challenge: String,
    expires: Instant,
}

/// The exact bytes a client signs: `tenthbit-auth-v1:<server>:<username,
/// lowercased>:<challenge as sent>`, UTF-8.
pub fn signed_message(server: &str, username: &str, challenge: &str) -> String {
    format!(
        "tenthbit-auth-v1:{server}:{}:{challenge}",
        username.to_lowercase()
    )
}

/// Parses a base64 Ed25519 public key into its canonical base64 form.
fn parse_key(text: &str) -> Result<(VerifyingKey, String), Denied> {
    let bad = || {
        Denied::new(
            ErrorCode::KeyInvalid,
            "a key is 32 bytes of Ed25519 public key, base64",
        )
    };
    let bytes: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
    Ok((key, B64.encode(key.as_bytes())))
}

/// A well-formed public key checked in the place of each key an account
/// does not hold (RFC 8032's first test key, whose secret is public: its
/// results never count).
const STAND_IN_KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/// Whether `check` passes for one of `keys`, after the same work whatever
/// the account: each of [`MAX_KEYS_PER_ACCOUNT`] places is parsed and
/// checked, one the account does not fill by [`STAND_IN_KEY`], whose
/// outcome is ignored. So the time of an answer tells neither whether the
/// name is an account nor how many keys it holds, as the first step's
/// `challenge` for any name promises (protocol.md 11.4.2). An account that
/// holds more (keys added on two sides of a partition) has each checked.
fn verifies_any(keys: &[String], mut check: impl FnMut(&VerifyingKey) -> bool) -> bool {
    let mut verified = false;
    for place in 0..keys.len().max(MAX_KEYS_PER_ACCOUNT) {
        let (text, counts) = match keys.get(place) {
            Some(key) => (key.as_str(), true),
            None => (STAND_IN_KEY, false),
        };
        let passed = parse_key(text).is_ok_and(|(key, _)| check(&key));
        // Kept opaque so that a stand-in's check is never optimised away.
        verified |= counts & std::hint::black_box(passed);
    }
    verified
}

impl Session<'_> {
    pub(super) async fn handle_key_add(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        key: &str,
    ) -> Result<Outcome, Denied> {
        super::federated::refuse_federated(me, "managing keys")?;
        let (_, canonical) = parse_key(key)?;
        let account = me.id;
        let full = self
            .ctx
            .store
            .call_synced(move |db| {
                let a = db.account(account)?.ok_or(crate::store::Error::NotFound)?;
                if a.keys.contains(&canonical) {
                    return Ok(false);
                }
                if a.keys.len() >= MAX_KEYS_PER_ACCOUNT {
                    return Ok(true);
                }
                db.set_key(account, &canonical, true)?;
                Ok(false)
            })
            .await?;
        if full {
            return Err(Denied::new(
                ErrorCode::KeyInvalid,
                format!("an account holds at most {MAX_KEYS_PER_ACCOUNT} keys"),
            ));
        }
        Ok(self.reply(reply::ack(id)))
    }

    pub(super) async fn handle_key_remove(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        key: &str,
    ) -> Result<Outcome, Denied> {
        super::federated::refuse_federated(me, "managing keys")?;
        let (_, canonical) = parse_key(key)?;
        let account = me.id;
        self.ctx
            .store
            .call_synced(move |db| db.set_key(account, &canonical, false))
            .await?;
        Ok(self.reply(reply::ack(id)))
    }

    pub(super) async fn handle_key_list(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
    ) -> Result<Outcome, Denied> {
        let account = me.id;
        let keys = self
            .ctx
            .store
            .call(move |db| Ok(db.account(account)?.map(|a| a.keys).unwrap_or_default()))
            .await?;
        let mut p = Packet::server("keys").with("keys", Value::from(keys));
        p = p.answering(id);
        Ok(self.reply(p))
    }

    /// Step one of a key login: a random challenge, valid once, for a while.
    /// Issued for any name, so it does not reveal which accounts exist.
    pub(super) fn issue_challenge(
        &mut self,
        id: Option<&str>,
        username: &str,
    ) -> Result<Outcome, Denied> {
        let mut nonce = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| Denied::new(ErrorCode::ServerInternal, "no system randomness"))?;
        let challenge = B64.encode(nonce);
        let ttl = Duration::from_millis(self.ctx.challenge_ttl_ms);
        self.challenge = Some(Challenge {
            username: username.to_lowercase(),
            challenge: challenge.clone(),
            expires: Instant::now() + ttl,
        });
        let expires = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut p = Packet::server("challenge")
            .with("challenge", challenge)
            .with("expires", expires)
            .with("server", self.ctx.server_name.as_str());
        p = p.answering(id);
        Ok(self.reply_secret(p))
    }

    /// Step two: the signature over `pending`, the challenge the connection
    /// held (taken by the caller: used up whatever the outcome).
    pub(super) async fn check_signature(
        &mut self,
        pending: Option<Challenge>,
        username: &str,
        signature: &Secret,
    ) -> Result<LoggedIn, Denied> {
        let Some(c) =
            pending.filter(|c| c.expires > Instant::now() && c.username == username.to_lowercase())
        else {
            return Err(Denied::new(
                ErrorCode::AuthChallengeExpired,
                "no live challenge for this name on this connection; ask for a new one",
            ));
        };
        let sig = B64
            .decode(signature.expose().trim())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b));
        let name = username.to_owned();
        let account = self
            .ctx
            .store
            .call(move |db| db.account_by_name(&name))
            .await?;
        let message = signed_message(&self.ctx.server_name, username, &c.challenge);
        // A signature that does not decode is checked as all zeros (which
        // no key verifies): the same work as any other.
        let sig = sig.unwrap_or_else(|| Signature::from_bytes(&[0; 64]));
        let account = account.filter(|a| !a.deleted && !a.disabled);
        let keys = account.as_ref().map_or(&[][..], |a| &a.keys[..]);
        let verified = verifies_any(keys, |key| {
            key.verify_strict(message.as_bytes(), &sig).is_ok()
        });
        account
            .filter(|_| verified)
            .map(|a| LoggedIn::new(a.id, a.name))
            .ok_or_else(|| Denied::new(ErrorCode::AuthFailed, "login failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// The test vector in protocol.md: RFC 8032's first test key signs the
    /// message for server `10b.it`, user `danopia`, challenge of 32 zero bytes.
    #[test]
    fn protocol_md_test_vector() {
        let secret: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let key = SigningKey::from_bytes(&secret);
        let challenge = B64.encode([0u8; 32]);
        let message = signed_message("10b.it", "DanOpia", &challenge);
        assert_eq!(
            message,
            "tenthbit-auth-v1:10b.it:danopia:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
        let public = B64.encode(key.verifying_key().as_bytes());
        assert_eq!(public, "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
        let sig = B64.encode(key.sign(message.as_bytes()).to_bytes());
        assert_eq!(sig, TEST_VECTOR_SIGNATURE);
    }

    /// Every place is checked whatever the account holds, and only the
    /// account's own keys count.
    #[test]
    fn every_key_place_is_checked_and_only_real_keys_count() {
        let key = |n: u8| B64.encode(SigningKey::from_bytes(&[n; 32]).verifying_key().as_bytes());
        let counting = |keys: &[String], passes: &dyn Fn(&VerifyingKey) -> bool| {
            let mut checks = 0;
            let verified = verifies_any(keys, |k| {
                checks += 1;
                passes(k)
            });
            (verified, checks)
        };
        let all = |_: &VerifyingKey| true;
        let none = |_: &VerifyingKey| false;
        let mine = key(7);
        let is_mine = |k: &VerifyingKey| B64.encode(k.as_bytes()) == mine;
        let many: Vec<String> = (0..16).map(key).collect();
        // No account (or no keys): a stand-in that passes does not count.
        assert_eq!(counting(&[], &all), (false, MAX_KEYS_PER_ACCOUNT));
        assert_eq!(counting(&[], &none), (false, MAX_KEYS_PER_ACCOUNT));
        assert_eq!(counting(&[key(1)], &none), (false, MAX_KEYS_PER_ACCOUNT));
        assert_eq!(
            counting(std::slice::from_ref(&mine), &is_mine),
            (true, MAX_KEYS_PER_ACCOUNT)
        );
        // The matching key first does not cut the work short.
        assert_eq!(
            counting(&[mine.clone(), key(1)], &is_mine),
            (true, MAX_KEYS_PER_ACCOUNT)
        );
        assert_eq!(counting(&many, &is_mine), (true, MAX_KEYS_PER_ACCOUNT));
        assert_eq!(counting(&many, &none), (false, MAX_KEYS_PER_ACCOUNT));
        // More than an account may add (a partition's two sides each added
        // some): every one is checked, the last too.
        let more: Vec<String> = (0..20).map(key).collect();
        let last = key(19);
        let is_last = |k: &VerifyingKey| B64.encode(k.as_bytes()) == last;
        assert_eq!(counting(&more, &is_last), (true, 20));
        // The stand-in is a key that parses, so its check runs.
        assert!(parse_key(STAND_IN_KEY).is_ok());
    }

    const TEST_VECTOR_SIGNATURE: &str =
        "hlmG5ItHs7NnTRNmt3p4PY6gw5RwS2qMsAViakkztPV3ztcHTL/fgntZnFjgH2J5z4i/76rHcoxFyaszJKatAw==";
}
