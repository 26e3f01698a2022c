//! Unit tests of the sealing: round trip, what the associated data binds, tampering, unknown
//! keys, fresh nonces, and key file errors that name the line but never the key.

use super::*;

const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..32
const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="; // bytes 32..64

fn id(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

fn sealing(text: &str) -> Sealing {
    Sealing::new(Some(Arc::new(Keyring::parse(text).unwrap())))
}

fn sealed(s: &StoredSecret) -> Sealed {
    match s {
        StoredSecret::Sealed(s) => s.clone(),
        StoredSecret::Plain(_) => panic!("not sealed"),
    }
}

#[test]
fn round_trip_and_the_last_key_encrypts() {
    let s = sealing(&format!("k1:{K1}\n\n# old above\nk2:{K2}\n"));
    let stored = s
        .seal(&id("m1"), Field::RefreshToken, "refresh_abc")
        .unwrap();
    assert_eq!(sealed(&stored).key_id, "k2");
    let opened = s.open(&id("m1"), Field::RefreshToken, &stored).unwrap();
    assert_eq!(opened, "refresh_abc");
    // A record sealed by k1 still opens with both keys present.
    let old = sealing(&format!("k1:{K1}"));
    let by_k1 = old.seal(&id("m1"), Field::RefreshToken, "x").unwrap();
    assert_eq!(s.open(&id("m1"), Field::RefreshToken, &by_k1).unwrap(), "x");
    // Plaintext passes through (today's format), and is what sealing without keys writes.
    let plain = StoredSecret::Plain("p".into());
    assert_eq!(s.open(&id("m1"), Field::RefreshToken, &plain).unwrap(), "p");
    let none = Sealing::default().seal(&id("m1"), Field::RefreshToken, "p");
    assert_eq!(none.unwrap(), plain);
}

#[test]
fn another_merchant_id_does_not_decrypt() {
    let s = sealing(&format!("k1:{K1}"));
    let stored = s.seal(&id("m1"), Field::RefreshToken, "secret-1").unwrap();
    let err = s.open(&id("m2"), Field::RefreshToken, &stored).unwrap_err();
    assert!(matches!(err, CryptoError::Open { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("merchant m2") && !text.contains("secret-1"),
        "{text}"
    );
}

#[test]
fn another_field_or_key_id_does_not_decrypt() {
    let s = sealing(&format!("k1:{K1}\nk2:{K1}"));
    let stored = s.seal(&id("m1"), Field::RefreshToken, "v").unwrap();
    // The associated data binds the field name: the same bytes under another name fail.
    let ad_other_field = b"mollie-gateway/sealed/v1\0m1\0k2\0access_token";
    let sealed_value = sealed(&stored);
    let key = s.keyring().unwrap().find("k2").unwrap();
    let nonce = B64.decode(&sealed_value.nonce).unwrap();
    let mut data = B64.decode(&sealed_value.ciphertext).unwrap();
    let nonce = Nonce::try_assume_unique_for_key(&nonce).unwrap();
    assert!(key
        .key
        .open_in_place(nonce, Aad::from(ad_other_field), &mut data)
        .is_err());
    // The key id is bound too: k1 holds the same key material, yet relabelling fails.
    let mut relabelled = sealed_value;
    relabelled.key_id = "k1".into();
    let err = s
        .open(
            &id("m1"),
            Field::RefreshToken,
            &StoredSecret::Sealed(relabelled),
        )
        .unwrap_err();
    assert!(matches!(err, CryptoError::Open { .. }), "{err}");
}

#[test]
fn tampered_ciphertext_fails() {
    let s = sealing(&format!("k1:{K1}"));
    let mut value = sealed(&s.seal(&id("m1"), Field::RefreshToken, "v").unwrap());
    let mut bytes = B64.decode(&value.ciphertext).unwrap();
    bytes[0] ^= 1;
    value.ciphertext = B64.encode(bytes);
    let err = s
        .open(&id("m1"), Field::RefreshToken, &StoredSecret::Sealed(value))
        .unwrap_err();
    assert!(matches!(err, CryptoError::Open { .. }), "{err}");
}

#[test]
fn unknown_key_id_and_missing_keyring_fail_naming_the_setting() {
    let stored = sealing(&format!("k1:{K1}"))
        .seal(&id("m1"), Field::RefreshToken, "v")
        .unwrap();
    let err = sealing(&format!("k2:{K2}"))
        .open(&id("m1"), Field::RefreshToken, &stored)
        .unwrap_err();
    assert!(matches!(err, CryptoError::UnknownKey { .. }), "{err}");
    let err = Sealing::default()
        .open(&id("m1"), Field::RefreshToken, &stored)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(KEY_SETTING) && text.contains("m1"), "{text}");
}

#[test]
fn nonces_differ_across_encryptions_of_the_same_value() {
    let s = sealing(&format!("k1:{K1}"));
    let a = sealed(&s.seal(&id("m1"), Field::RefreshToken, "same").unwrap());
    let b = sealed(&s.seal(&id("m1"), Field::RefreshToken, "same").unwrap());
    assert_ne!(a.nonce, b.nonce);
    assert_ne!(a.ciphertext, b.ciphertext);
    assert_eq!(B64.decode(&a.nonce).unwrap().len(), 12);
}

#[test]
fn bad_key_files_name_the_line_never_the_key() {
    let short = B64.encode([7u8; 16]);
    for (text, line) in [
        (format!("k1:{K1}\nk2:{short}"), Some(2)),
        (format!("k1:{K1}\n\nnocolon{K2}"), Some(3)),
        (format!("k1:{K1}\nk1:{K2}"), Some(2)),
        ("bad id:AAAA".to_string(), Some(1)),
        ("k1:not*base64".to_string(), Some(1)),
        ("# only a comment\n".to_string(), None),
    ] {
        let (got, reason) = Keyring::parse(&text).expect_err("must fail");
        assert_eq!(got, line, "{text}: {reason}");
        assert!(!reason.contains(K2) && !reason.contains(&short), "{reason}");
    }
    let ring = Keyring::parse(&format!("k1:{K1}\nk2:{K2}")).unwrap();
    let debug = format!("{ring:?}");
    assert!(debug.contains("***") && !debug.contains(K1), "{debug}");
    assert_eq!(ring.current_id(), "k2");
    let secret = format!("{:?}", StoredSecret::Plain("tok".into()));
    assert!(!secret.contains("tok"), "{secret}");
}
