//! Attacks on the tokens we check (issue 5, point 4): one test per attack,
//! each thrown at all four places that take a Bearer token: userinfo,
//! introspection, `/accounts/me` and the admin API. Every forgery must be
//! `401 invalid_token` (RFC 6750 §3.1; problem+json outside `/oauth2`) and
//! exactly `{"active":false}` on introspection (RFC 7662 §2.2).
//!
//! Each test first shows that the same signed-in admin's genuine token is
//! accepted everywhere, and, where it re-signs with the real key, that an
//! unchanged re-signed token passes too: a refusal then proves the one
//! thing the attack changed is what was caught.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gatehouse::keys::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;

const ADMIN: &str = "root@example.com";
const INACTIVE: &str = r#"{"active":false}"#;

/// An app with a signed-in admin, a confidential client that introspects,
/// and the real signing key read from the keys directory.
struct Target {
    app: TestApp,
    client: TestClient,
    /// The admin's password-grant answer (`access_token`, `refresh_token`, `id_token`).
    login: Value,
    key: SigningKey,
}

async fn target() -> Target {
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user(ADMIN).await;
    make_admin(&app, ADMIN).await;
    let login = app.login(&client, ADMIN, Some("openid profile email")).await;
    let kid = jsonwebtoken::decode_header(login["access_token"].as_str().unwrap())
        .unwrap()
        .kid
        .unwrap();
    let key = gatehouse::keys::read_key_dir(&app.config.keys_dir)
        .unwrap()
        .into_iter()
        .find(|k| k.kid == kid)
        .expect("the signing key is in the keys directory");
    let target = Target {
        app,
        client,
        login,
        key,
    };
    target
        .assert_accepted(target.access_token(), "the genuine token")
        .await;
    target
}

async fn make_admin(app: &TestApp, email: &str) {
    app.cli(&["users", "set-role", "--email", email, "--role", "admin"])
        .await;
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS with any header, signed with `key` (RS256), or with no
/// signature at all when `key` is `None`.
fn sign(key: Option<&SigningKey>, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).unwrap()),
        b64(&serde_json::to_vec(claims).unwrap())
    );
    let signature = key.map(|k| k.sign(input.as_bytes()).unwrap()).unwrap_or_default();
    format!("{input}.{}", b64(&signature))
}

fn attacker_key() -> SigningKey {
    SigningKey::generate().unwrap().0
}

impl Target {
    fn access_token(&self) -> &str {
        self.login["access_token"].as_str().unwrap()
    }

    /// The genuine token's claims.
    fn claims(&self) -> Value {
        jwt_parts(self.access_token()).1
    }

    /// The genuine token's claims with `changes` applied (`null` removes a claim).
    fn claims_with(&self, changes: Value) -> Value {
        let mut claims = self.claims();
        for (name, value) in changes.as_object().unwrap() {
            match value {
                Value::Null => {
                    claims.as_object_mut().unwrap().remove(name);
                }
                v => claims[name] = v.clone(),
            }
        }
        claims
    }

    /// The header our server writes: RS256, `at+jwt`, the real kid.
    fn header(&self) -> Value {
        json!({"alg": "RS256", "typ": "at+jwt", "kid": self.key.kid})
    }

    /// Re-signed with the real key through the crate's own encoder.
    fn real_signed(&self, typ: &str, claims: &Value) -> String {
        gatehouse::tokens::jwt::encode(&self.key, typ, claims).unwrap()
    }

    /// Accepted by all four: the control of every test.
    async fn assert_accepted(&self, token: &str, what: &str) {
        let app = &self.app;
        let resp = app.userinfo(token).await;
        assert_eq!(resp.status(), 200, "userinfo refused {what}");
        let seen = app.introspect(&self.client, token).await;
        assert_eq!(seen["active"], true, "introspection refused {what}: {seen}");
        for path in ["/accounts/me", "/admin/users"] {
            let resp = app
                .http
                .get(app.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path} refused {what}");
        }
    }

    /// Refused by all four, each in its own wire shape.
    async fn assert_refused(&self, token: &str, what: &str) {
        self.assert_refused_with(&self.client, token, what).await;
    }

    /// [`Target::assert_refused`], introspecting as `introspector`.
    async fn assert_refused_with(&self, introspector: &TestClient, token: &str, what: &str) {
        let app = &self.app;

        // RFC 6750 §3.1 on userinfo, GET and POST.
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let resp = app
                .http
                .request(method.clone(), app.url("/oauth2/userinfo"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 401, "{method} userinfo accepted {what}");
            let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
            assert!(
                challenge.starts_with("Bearer") && challenge.contains(r#"error="invalid_token""#),
                "{what}: {challenge}"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "invalid_token", "{what}: {body}");
        }

        // RFC 7662 §2.2: exactly inactive, nothing else said.
        let resp = app
            .post_form("/oauth2/introspect", introspector, &[("token", token)])
            .await;
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.text().await.unwrap(), INACTIVE, "introspection of {what}");

        // RFC 9457 problem+json with the same challenge elsewhere.
        for path in ["/accounts/me", "/admin/users"] {
            let resp = app
                .http
                .get(app.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 401, "{path} accepted {what}");
            assert_eq!(
                resp.headers()["content-type"],
                "application/problem+json",
                "{path}, {what}"
            );
            let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
            assert!(
                challenge.contains(r#"error="invalid_token""#),
                "{path}, {what}: {challenge}"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["code"], "invalid_token", "{path}, {what}: {body}");
            assert_eq!(body["status"], 401, "{path}, {what}: {body}");
        }
    }

    /// A victim who is an admin too, signed in: its id and login.
    async fn admin_victim(&self, email: &str) -> (String, Value) {
        let id = self.app.create_user(email).await;
        make_admin(&self.app, email).await;
        let login = self.app.login(&self.client, email, Some("openid")).await;
        self.assert_accepted(login["access_token"].as_str().unwrap(), email)
            .await;
        (id, login)
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let t = target().await;
    let claims = t.claims();
    let genuine_signature = t.access_token().rsplit('.').next().unwrap().to_owned();

    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": t.key.kid});
        let unsigned = sign(None, &header, &claims);
        t.assert_refused(&unsigned, &format!("alg {alg}, no signature"))
            .await;
        // The genuine signature kept, as some libraries ignore it under `none`.
        let kept = format!("{}.{genuine_signature}", unsigned.trim_end_matches('.'));
        t.assert_refused(&kept, &format!("alg {alg}, old signature"))
            .await;
    }
    // No `alg` at all.
    let no_alg = sign(Some(&t.key), &json!({"typ": "at+jwt", "kid": t.key.kid}), &claims);
    t.assert_refused(&no_alg, "no alg").await;
}

/// DER, just enough for an RSA public key.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(big_endian: &[u8]) -> Vec<u8> {
    let mut content = Vec::new();
    if big_endian.first().is_some_and(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(big_endian);
    der(0x02, &content)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every form of our public key a confused verifier might use as an HMAC secret.
fn public_key_forms(key: &SigningKey, jwks_body: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let n = URL_SAFE_NO_PAD.decode(&key.jwk.n).unwrap();
    let e = URL_SAFE_NO_PAD.decode(&key.jwk.e).unwrap();
    let mut pkcs1_content = der_uint(&n);
    pkcs1_content.extend(der_uint(&e));
    let pkcs1 = der(0x30, &pkcs1_content);
    // SubjectPublicKeyInfo: rsaEncryption OID, NULL, BIT STRING(pkcs1).
    let mut algorithm = der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]);
    algorithm.extend([0x05, 0x00]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(&pkcs1);
    let mut spki_content = der(0x30, &algorithm);
    spki_content.extend(der(0x03, &bits));
    let spki = der(0x30, &spki_content);
    let spki_pem = pem("PUBLIC KEY", &spki);
    let jwk = serde_json::to_vec(&key.jwk).unwrap();
    vec![
        ("SPKI PEM", spki_pem.clone().into_bytes()),
        (
            "SPKI PEM without the final newline",
            spki_pem.trim_end().as_bytes().to_vec(),
        ),
        ("SPKI DER", spki),
        ("PKCS#1 PEM", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()),
        ("PKCS#1 DER", pkcs1),
        ("modulus bytes", n),
        ("JWK JSON", jwk),
        ("JWKS document", jwks_body.to_vec()),
        ("n as text", key.jwk.n.clone().into_bytes()),
    ]
}

#[tokio::test]
async fn hs256_signed_with_our_public_key_is_refused() {
    let t = target().await;
    let claims = t.claims();
    let jwks = t
        .app
        .http
        .get(t.app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let forms = public_key_forms(&t.key, &jwks);

    // The PKCS#1 form is right: it verifies a genuine signature.
    let (signed, signature) = t.access_token().rsplit_once('.').unwrap();
    let pkcs1 = &forms.iter().find(|(name, _)| *name == "PKCS#1 DER").unwrap().1;
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, pkcs1)
        .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(signature).unwrap())
        .expect("the hand-made public key DER matches the signing key");

    for (form, secret) in &forms {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.typ = Some("at+jwt".into());
            header.kid = Some(t.key.kid.clone());
            let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
            t.assert_refused(&token, &format!("{alg:?} keyed with the {form}"))
                .await;
        }
    }
}

#[tokio::test]
async fn an_unknown_kid_is_refused() {
    let t = target().await;
    let claims = t.claims();
    let attacker = attacker_key();

    let cases = [
        (
            "the attacker's own key and kid",
            sign(
                Some(&attacker),
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": attacker.kid}),
                &claims,
            ),
        ),
        (
            "the real key under an unknown kid",
            sign(
                Some(&t.key),
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": "2024-rotated-key"}),
                &claims,
            ),
        ),
        (
            "the real key with no kid",
            sign(Some(&t.key), &json!({"alg": "RS256", "typ": "at+jwt"}), &claims),
        ),
        (
            "the real kid in another case",
            sign(
                Some(&t.key),
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": t.key.kid.to_uppercase()}),
                &claims,
            ),
        ),
        (
            "a kid that is not a string",
            sign(
                Some(&t.key),
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": 1}),
                &claims,
            ),
        ),
    ];
    // Control: the real key under the real kid, through the same hand signer.
    t.assert_accepted(&sign(Some(&t.key), &t.header(), &claims), "hand-signed control")
        .await;
    for (what, token) in &cases {
        t.assert_refused(token, what).await;
    }
}

#[tokio::test]
async fn an_injected_kid_is_refused() {
    let t = target().await;
    let claims = t.claims();
    let attacker = attacker_key();
    let kids = [
        "../../etc/passwd".to_owned(),
        "../../../../../../dev/null".to_owned(),
        "/dev/null".to_owned(),
        format!("../keys/{}", t.key.kid),
        format!("{}.pem", t.key.kid),
        format!("{}/../{}", t.key.kid, t.key.kid),
        "' or 1=1--".to_owned(),
        format!("{}' or '1'='1", t.key.kid),
        "x'; drop table signing_key; --".to_owned(),
        "\" or \"\"=\"".to_owned(),
        "%00".to_owned(),
        format!("{}\u{0}", t.key.kid),
        "|cat /etc/passwd".to_owned(),
        "$(id)".to_owned(),
        "k".repeat(4000),
    ];
    for kid in &kids {
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid});
        t.assert_refused(
            &sign(Some(&attacker), &header, &claims),
            &format!("attacker key, kid {kid:?}"),
        )
        .await;
        t.assert_refused(
            &sign(Some(&t.key), &header, &claims),
            &format!("real key, kid {kid:?}"),
        )
        .await;
    }
    // The classic: a kid naming an empty file, and HS256 keyed with nothing.
    for kid in ["../../../../../../dev/null", "/dev/null"] {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(b"")).unwrap();
        t.assert_refused(&token, &format!("HS256 with an empty secret, kid {kid}"))
            .await;
    }
    // The key set is intact: the genuine token still works.
    t.assert_accepted(t.access_token(), "the genuine token afterwards")
        .await;
}

/// A server on a free port that counts the connections it gets and answers
/// each with `body`: where a `jku`/`x5u` would lead a verifier that follows it.
async fn bait(body: String) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    (base, hits)
}

#[tokio::test]
async fn jku_and_x5u_headers_pointing_elsewhere_are_refused() {
    let t = target().await;
    let claims = t.claims();
    let attacker = attacker_key();
    let attacker_jwks = json!({"keys": [attacker.jwk]}).to_string();
    let (bait_url, hits) = bait(attacker_jwks).await;
    let jku = format!("{bait_url}/.well-known/jwks.json");
    let x5u = format!("{bait_url}/cert.pem");

    let mut cases = Vec::new();
    for (name, url) in [("jku", &jku), ("x5u", &x5u)] {
        // The attack: the attacker's key, published where the header points.
        let mut header = json!({"alg": "RS256", "typ": "at+jwt", "kid": attacker.kid});
        header[name] = json!(url);
        cases.push((
            format!("{name} to the attacker's key set"),
            sign(Some(&attacker), &header, &claims),
        ));
        // The attacker's key under our kid.
        let mut header = t.header();
        header[name] = json!(url);
        cases.push((
            format!("{name} with our kid"),
            sign(Some(&attacker), &header, &claims),
        ));
        // Even our own signature: we never write these headers, so a token
        // carrying one is not ours as issued.
        cases.push((
            format!("{name} on a genuinely signed token"),
            sign(Some(&t.key), &header, &claims),
        ));
    }
    // Our own issuer's JWKS URL is no better.
    let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": attacker.kid,
        "jku": t.app.url("/.well-known/jwks.json")});
    cases.push((
        "jku to our own JWKS".into(),
        sign(Some(&attacker), &header, &claims),
    ));
    let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": attacker.kid,
        "x5c": [STANDARD.encode(b"not a certificate")]});
    cases.push(("an x5c chain".into(), sign(Some(&attacker), &header, &claims)));

    for (what, token) in &cases {
        t.assert_refused(token, what).await;
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the server fetched a URL named in a token header"
    );
}

#[tokio::test]
async fn an_embedded_jwk_header_is_refused() {
    let t = target().await;
    let claims = t.claims();
    let attacker = attacker_key();
    let jwk = serde_json::to_value(&attacker.jwk).unwrap();
    let cases = [
        (
            "the attacker's key embedded under its own kid",
            json!({"alg": "RS256", "typ": "at+jwt", "kid": attacker.kid, "jwk": jwk}),
        ),
        (
            "the attacker's key embedded under our kid",
            json!({"alg": "RS256", "typ": "at+jwt", "kid": t.key.kid, "jwk": jwk}),
        ),
        (
            "the attacker's key embedded with no kid",
            json!({"alg": "RS256", "typ": "at+jwt", "jwk": jwk}),
        ),
    ];
    for (what, header) in &cases {
        t.assert_refused(&sign(Some(&attacker), header, &claims), what)
            .await;
    }
    // Our own public key embedded, signed by us: still a header we never write.
    let ours = json!({"alg": "RS256", "typ": "at+jwt", "kid": t.key.kid,
        "jwk": serde_json::to_value(&t.key.jwk).unwrap()});
    t.assert_refused(&sign(Some(&t.key), &ours, &claims), "our own key embedded")
        .await;
}

#[tokio::test]
async fn a_wrong_typ_is_refused_even_when_signed_by_our_key() {
    let t = target().await;
    let claims = t.claims();
    t.assert_accepted(&t.real_signed("at+jwt", &claims), "re-signed control")
        .await;
    for typ in [
        "JWT",
        "jwt",
        "application/jwt",
        "JOSE",
        "id_token+jwt",
        "at+jwt2",
        "",
    ] {
        t.assert_refused(&t.real_signed(typ, &claims), &format!("typ {typ:?}"))
            .await;
    }
    let no_typ = sign(Some(&t.key), &json!({"alg": "RS256", "kid": t.key.kid}), &claims);
    t.assert_refused(&no_typ, "no typ").await;
}

#[tokio::test]
async fn a_wrong_issuer_is_refused() {
    let t = target().await;
    let port = t.app.base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let cases = [
        json!("https://evil.example"),
        json!(format!("{}/", t.app.base)),
        json!(format!("http://127.0.0.1:{}", port.wrapping_add(1))),
        json!(format!("http://localhost:{port}")),
        json!(t.app.base.to_uppercase()),
        json!(""),
        json!([t.app.base]),
        Value::Null,
    ];
    for iss in cases {
        let claims = t.claims_with(json!({"iss": iss}));
        t.assert_refused(&t.real_signed("at+jwt", &claims), &format!("iss {iss}"))
            .await;
    }
}

#[tokio::test]
async fn a_wrong_audience_is_refused() {
    let t = target().await;
    let cases = [
        json!("https://api.other.example"),
        json!(["https://api.other.example"]),
        json!([]),
        json!(t.client.id),
        json!(format!("{}/", t.app.base)),
        json!(""),
        Value::Null,
    ];
    // Control: ours among others is fine (RFC 7519 §4.1.3).
    let claims = t.claims_with(json!({"aud": ["https://api.other.example", t.app.base]}));
    t.assert_accepted(&t.real_signed("at+jwt", &claims), "our audience among others")
        .await;
    for aud in cases {
        let claims = t.claims_with(json!({"aud": aud}));
        t.assert_refused(&t.real_signed("at+jwt", &claims), &format!("aud {aud}"))
            .await;
    }
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let t = target().await;
    let now = gatehouse::now();
    for (what, changes) in [
        ("expired a second ago", json!({"exp": now - 1, "iat": now - 901})),
        (
            "expired long ago",
            json!({"exp": now - 86_400, "iat": now - 87_300}),
        ),
        ("exp at the epoch", json!({"exp": 0})),
        ("a negative exp", json!({"exp": -1})),
        ("no exp", json!({"exp": null})),
        ("exp as text", json!({"exp": format!("{}", now + 600)})),
    ] {
        let claims = t.claims_with(changes);
        t.assert_refused(&t.real_signed("at+jwt", &claims), what).await;
    }
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused() {
    let t = target().await;
    let now = gatehouse::now();
    // Control: an nbf in the past is fine.
    let claims = t.claims_with(json!({"nbf": now - 5}));
    t.assert_accepted(&t.real_signed("at+jwt", &claims), "nbf in the past")
        .await;
    for (what, changes) in [
        ("nbf in a minute", json!({"nbf": now + 60})),
        ("nbf in a day", json!({"nbf": now + 86_400, "exp": now + 90_000})),
        ("nbf as text", json!({"nbf": format!("{}", now + 3600)})),
    ] {
        let claims = t.claims_with(changes);
        t.assert_refused(&t.real_signed("at+jwt", &claims), what).await;
    }
}

#[tokio::test]
async fn a_tampered_token_is_refused() {
    let t = target().await;
    let genuine = t.access_token().to_owned();
    let parts: Vec<&str> = genuine.split('.').collect();
    let other_id = t.app.create_user("ada@example.com").await;
    let now = gatehouse::now();

    let with_claims = |changes: Value| {
        let claims = t.claims_with(changes);
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&claims).unwrap()),
            parts[2]
        )
    };
    let flip = |segment: usize, at: usize| {
        let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        let mut bytes = URL_SAFE_NO_PAD.decode(&p[segment]).unwrap();
        let i = at.min(bytes.len() - 1);
        bytes[i] ^= 0x01;
        p[segment] = b64(&bytes);
        p.join(".")
    };
    let cases = [
        (
            "sub switched to another user",
            with_claims(json!({"sub": other_id})),
        ),
        (
            "roles widened",
            with_claims(json!({"roles": ["admin", "superuser"]})),
        ),
        (
            "scope widened",
            with_claims(json!({"scope": "openid profile email admin"})),
        ),
        (
            "lifetime extended",
            with_claims(json!({"exp": now + 10 * 365 * 86_400})),
        ),
        ("a claim added", with_claims(json!({"admin": true}))),
        ("a bit of the claims flipped", flip(1, 10)),
        ("a bit of the header flipped", flip(0, 5)),
        ("a bit of the signature flipped", flip(2, 100)),
        ("the signature of another token", {
            let other = t.app.login(&t.client, "ada@example.com", None).await;
            let other = other["access_token"].as_str().unwrap().to_owned();
            format!("{}.{}.{}", parts[0], parts[1], other.rsplit('.').next().unwrap())
        }),
        ("the signature removed", format!("{}.{}.", parts[0], parts[1])),
        ("the signature dropped", format!("{}.{}", parts[0], parts[1])),
        ("a fourth segment", format!("{genuine}.{}", parts[2])),
        (
            "the claims padded with base64 '='",
            format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
        ),
        ("the claims in standard base64", {
            let claims = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
            format!("{}.{}.{}", parts[0], STANDARD.encode(claims), parts[2])
        }),
        (
            "whitespace inside",
            format!("{}. {}.{}", parts[0], parts[1], parts[2]),
        ),
        ("the header swapped for an id_token's", {
            let id_token = t.login["id_token"].as_str().unwrap();
            format!(
                "{}.{}.{}",
                id_token.split('.').next().unwrap(),
                parts[1],
                parts[2]
            )
        }),
    ];
    for (what, token) in &cases {
        t.assert_refused(token, what).await;
    }
    t.assert_accepted(&genuine, "the untouched token").await;
}

#[tokio::test]
async fn an_id_token_is_refused_as_an_access_token() {
    let t = target().await;
    let id_token = t.login["id_token"]
        .as_str()
        .expect("an id_token for openid")
        .to_owned();
    let (header, claims) = jwt_parts(&id_token);
    assert_eq!(header["typ"], "JWT");
    assert_eq!(claims["aud"], t.client.id.as_str());
    t.assert_refused(&id_token, "an id_token").await;

    // Re-typed by an attacker: its signature no longer holds.
    let (_, _, signature) = {
        let mut p = id_token.split('.');
        (p.next(), p.next(), p.next().unwrap())
    };
    let retyped = format!(
        "{}.{}.{signature}",
        b64(&serde_json::to_vec(&t.header()).unwrap()),
        id_token.split('.').nth(1).unwrap()
    );
    t.assert_refused(&retyped, "an id_token re-typed at+jwt").await;
}

#[tokio::test]
async fn a_refresh_token_is_refused_as_a_bearer_token() {
    let t = target().await;
    let refresh_token = t.login["refresh_token"].as_str().unwrap().to_owned();
    // Any client but its own sees nothing on introspection (SPEC §10).
    let stranger = t.app.web_client().await;
    t.assert_refused_with(&stranger, &refresh_token, "a refresh token")
        .await;
    // Its own client may introspect it (SPEC §10), but not as a Bearer token.
    let seen = t.app.introspect(&t.client, &refresh_token).await;
    assert_eq!(seen["active"], true);
    assert!(seen.get("token_type").is_none(), "{seen}");
    // And it still works as a refresh token: nothing above spent it.
    assert_eq!(t.app.refresh(&t.client, &refresh_token).await.status(), 200);
}

#[tokio::test]
async fn tokens_of_a_user_deleted_by_an_admin_are_refused() {
    let t = target().await;
    let (victim_id, victim) = t.admin_victim("ada@example.com").await;
    let victim_token = victim["access_token"].as_str().unwrap();

    let resp = t
        .app
        .http
        .delete(t.app.url(&format!("/admin/users/{victim_id}")))
        .bearer_auth(t.access_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    t.assert_refused(victim_token, "a token of a deleted user").await;
    // A new account under the same address does not bring the token back.
    t.app.create_user("ada@example.com").await;
    make_admin(&t.app, "ada@example.com").await;
    t.assert_refused(victim_token, "a token of a deleted, re-registered address")
        .await;
}

#[tokio::test]
async fn tokens_of_a_user_who_deleted_their_account_are_refused() {
    let t = target().await;
    let (_, victim) = t.admin_victim("ada@example.com").await;
    let victim_token = victim["access_token"].as_str().unwrap();

    let resp = t
        .app
        .http
        .delete(t.app.url("/accounts/me"))
        .bearer_auth(victim_token)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    t.assert_refused(victim_token, "a token of a deleted account")
        .await;
}

#[tokio::test]
async fn tokens_of_a_disabled_user_are_refused() {
    let t = target().await;
    let (_, victim) = t.admin_victim("ada@example.com").await;
    let victim_token = victim["access_token"].as_str().unwrap();

    t.app
        .cli(&["users", "disable", "--email", "ada@example.com"])
        .await;

    t.assert_refused(victim_token, "a token of a disabled user").await;
    // Re-signed fresh by our own key with the same claims: still refused,
    // because the check is the user's state, not the token's age.
    let now = gatehouse::now();
    let mut claims = jwt_parts(victim_token).1;
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 600);
    t.assert_refused(
        &t.real_signed("at+jwt", &claims),
        "a fresh token of a disabled user",
    )
    .await;
}
