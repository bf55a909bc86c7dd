//! Fuzz-style: every operation of the served OpenAPI document, the HTML
//! pages and a few unknown paths get random bytes, wrong content types,
//! empty and huge bodies, garbage path parameters and query strings, NUL
//! bytes and overlong headers, with and without valid credentials. No
//! answer may be a 5xx, and every error must come in one of our shapes:
//! JSON on `/oauth2/*`, problem+json elsewhere (HTML on the pages browsers
//! open: the mail-link and sign-in pages and the authorization endpoint).
//!
//! The generator is a seeded xorshift, so a failure replays: the seed is
//! printed with it, and `GATEHOUSE_FUZZ_SEED=<n>` runs another sequence.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::helpers::*;

/// Random cases per operation, beside the fixed hostile ones.
const RANDOM_CASES: usize = 8;
/// Larger than any body limit we set (64 KiB), far below anything harmful.
const HUGE: usize = 2 * 1024 * 1024;

/// xorshift64*: small, seedable, good enough to pick test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Printable ASCII, sometimes with the characters parsers trip on.
    fn text(&mut self, max: usize) -> String {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| match self.below(10) {
                0 => *self.pick(&['%', '&', '=', '+', ';', '"', '\\', '\'', '<', '{']),
                _ => (0x20 + self.below(0x5f) as u8) as char,
            })
            .collect()
    }

    /// Any Unicode scalar value, NUL and controls included.
    fn unicode(&mut self, max: usize) -> String {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| {
                let ranges: [(u32, u32); 5] = [
                    (0, 0x20),
                    (0x20, 0x7f),
                    (0x80, 0x800),
                    (0x800, 0xd800),
                    (0xe000, 0x11_0000),
                ];
                let (lo, hi) = *self.pick(&ranges);
                char::from_u32(lo + (self.next() % u64::from(hi - lo)) as u32).unwrap_or('\u{fffd}')
            })
            .collect()
    }
}

/// Percent-encodes every byte that is not unreserved (RFC 3986 §2.3).
fn pct(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// One operation of the document.
#[derive(Debug, Clone)]
struct Operation {
    method: reqwest::Method,
    /// With `{param}` placeholders.
    path: String,
    /// The content type the document declares for the body, if any.
    body_type: Option<String>,
    /// Property names of the request body schema.
    fields: Vec<String>,
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            let content = op["requestBody"]["content"].as_object();
            let (body_type, fields) = match content.and_then(|c| c.iter().next()) {
                Some((ct, media)) => {
                    let schema = resolve(doc, &media["schema"]);
                    let fields = schema["properties"]
                        .as_object()
                        .map(|p| p.keys().cloned().collect())
                        .unwrap_or_default();
                    (Some(ct.clone()), fields)
                }
                None => (None, Vec::new()),
            };
            out.push(Operation {
                method,
                path: path.clone(),
                body_type,
                fields,
            });
        }
    }
    out
}

/// What a path parameter becomes: unknown ids, and worse.
fn garbage_param(rng: &mut Rng) -> String {
    match rng.below(9) {
        0 => uuid::Uuid::new_v4().to_string(),
        1 => pct(b"../../etc/passwd"),
        2 => pct(b"' or 1=1--"),
        3 => "%00".into(),
        4 => "%FF%FE%C0%AF".into(),
        5 => "x".repeat(3000),
        6 => pct(&rng.bytes(40)),
        7 => pct(rng.unicode(20).as_bytes()),
        _ => {
            rng.text(20)
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                + "0"
        }
    }
}

fn random_query(rng: &mut Rng) -> String {
    let mut parts = Vec::new();
    for _ in 0..rng.below(5) {
        let key = match rng.below(5) {
            0 => "limit".to_owned(),
            1 => "cursor".to_owned(),
            2 => "token".to_owned(),
            3 => pct(&rng.bytes(8)),
            _ => rng.text(6).replace(['#', ' '], "_"),
        };
        let value = match rng.below(8) {
            0 => "%00".to_owned(),
            1 => "-1".to_owned(),
            2 => "99999999999999999999999".to_owned(),
            3 => "%ZZ%".to_owned(),
            4 => pct(&rng.bytes(30)),
            5 => "x".repeat(5000),
            6 => String::new(),
            _ => pct(rng.unicode(10).as_bytes()),
        };
        parts.push(format!("{key}={value}"));
    }
    if rng.chance(10) {
        parts.push("&&==&".into());
    }
    parts.join("&")
}

/// A JSON value of a random type, often a hostile one.
fn json_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 9 } else { 11 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next() as i64),
        3 => json!(-1),
        4 => json!(1e300),
        5 => json!(""),
        6 => json!("a\u{0}b"),
        7 => json!("x".repeat(70_000 / 8)),
        8 => json!(rng.unicode(30)),
        9 => Value::Array((0..rng.below(4)).map(|_| json_value(rng, depth + 1)).collect()),
        _ => json!({ "nested": json_value(rng, depth + 1), "$ne": null }),
    }
}

/// An object with the operation's own field names holding random values,
/// so that the handler's validation is reached, not only the parser's.
fn json_object(rng: &mut Rng, fields: &[String]) -> Value {
    let mut object = serde_json::Map::new();
    for field in fields {
        if rng.chance(80) {
            let value = if rng.chance(40) {
                json!(rng.unicode(40))
            } else {
                json_value(rng, 0)
            };
            object.insert(field.clone(), value);
        }
    }
    if rng.chance(20) {
        object.insert(rng.text(8), json_value(rng, 0));
    }
    Value::Object(object)
}

fn form_body(rng: &mut Rng, fields: &[String]) -> String {
    let mut pairs = Vec::new();
    for field in fields {
        if rng.chance(75) {
            let value = match rng.below(6) {
                0 => "%00".to_owned(),
                1 => String::new(),
                2 => "x".repeat(5000),
                3 => "%FF%FE".to_owned(),
                4 => pct(&rng.bytes(40)),
                _ => pct(rng.unicode(30).as_bytes()),
            };
            pairs.push(format!("{field}={value}"));
            if rng.chance(10) {
                pairs.push(format!("{field}=again"));
            }
        }
    }
    if rng.chance(30) {
        pairs.push(format!("{}={}", pct(&rng.bytes(6)), pct(&rng.bytes(6))));
    }
    pairs.join("&")
}

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// One request to send, before authentication.
#[derive(Debug, Clone)]
struct Case {
    label: String,
    content_type: Option<String>,
    body: Option<Vec<u8>>,
    query: String,
    /// An extra header, usually an overlong one.
    header: Option<(String, String)>,
}

impl Case {
    fn new(label: impl Into<String>, content_type: Option<&str>, body: Option<Vec<u8>>) -> Case {
        Case {
            label: label.into(),
            content_type: content_type.map(str::to_owned),
            body,
            query: String::new(),
            header: None,
        }
    }
}

/// The fixed hostile cases for an operation whose own fields are `fields`.
fn fixed_cases(rng: &mut Rng, fields: &[String], takes_body: bool) -> Vec<Case> {
    let object = json_object(rng, fields);
    let form = form_body(rng, fields);
    let nul_json = Value::Object(fields.iter().map(|f| (f.clone(), json!("a\u{0}b"))).collect());
    let nul_form: Vec<String> = fields.iter().map(|f| format!("{f}=a%00b")).collect();
    let boundary = "XfuzzX";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n{}\r\n--{boundary}--\r\n",
        fields.first().map_or("x", String::as_str),
        rng.text(30)
    );
    let mut cases = vec![
        Case::new("no body", None, None),
        Case::new("empty JSON", Some(JSON), Some(Vec::new())),
        Case::new("empty form", Some(FORM), Some(Vec::new())),
        Case::new("random bytes as JSON", Some(JSON), Some(rng.bytes(512))),
        Case::new("random bytes as a form", Some(FORM), Some(rng.bytes(512))),
        Case::new("random bytes, no type", None, Some(rng.bytes(256))),
        Case::new("text/plain", Some("text/plain"), Some(rng.text(200).into_bytes())),
        Case::new(
            "multipart",
            Some(&format!("multipart/form-data; boundary={boundary}")),
            Some(multipart.into_bytes()),
        ),
        Case::new("XML", Some("application/xml"), Some(b"<a><b/></a>".to_vec())),
        Case::new("a form sent as JSON", Some(JSON), Some(form.clone().into_bytes())),
        Case::new(
            "JSON sent as a form",
            Some(FORM),
            Some(object.to_string().into_bytes()),
        ),
        Case::new(
            "JSON, right fields",
            Some(JSON),
            Some(object.to_string().into_bytes()),
        ),
        Case::new("form, right fields", Some(FORM), Some(form.into_bytes())),
        Case::new(
            "NUL in every JSON field",
            Some(JSON),
            Some(nul_json.to_string().into_bytes()),
        ),
        Case::new(
            "NUL in every form field",
            Some(FORM),
            Some(nul_form.join("&").into_bytes()),
        ),
        Case::new("NUL bytes raw", Some(JSON), Some(b"{\"a\0\":\"\0\"}\0".to_vec())),
        Case::new("a JSON array", Some(JSON), Some(b"[1,2,3]".to_vec())),
        Case::new("a JSON string", Some(JSON), Some(b"\"x\"".to_vec())),
        Case::new(
            "deep JSON",
            Some(JSON),
            Some(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes()),
        ),
        Case::new(
            "UTF-16 JSON",
            Some("application/json; charset=utf-16"),
            Some(vec![0xff, 0xfe, b'{', 0, b'}', 0]),
        ),
        Case::new(
            "invalid UTF-8 in JSON",
            Some(JSON),
            Some(b"{\"email\":\"\xff\xfe\"}".to_vec()),
        ),
        Case::new("garbage content type", Some(";;; =/="), Some(b"{}".to_vec())),
    ];
    if takes_body {
        cases.push(Case::new("a 2 MiB JSON body", Some(JSON), Some(vec![b'a'; HUGE])));
        cases.push(Case::new("a 2 MiB form body", Some(FORM), Some(vec![b'a'; HUGE])));
    }
    let overlong = [
        ("x-request-id", "r".repeat(10_000)),
        ("content-type", format!("{JSON};{}", "p=v;".repeat(2000))),
        ("accept", "a/b,".repeat(2500)),
        ("cookie", format!("gatehouse_session={}", "c".repeat(12_000))),
        ("origin", format!("http://{}.example", "o".repeat(8000))),
        ("x-forwarded-for", "10.0.0.1, ".repeat(1500)),
        ("if-none-match", "\"e\", ".repeat(2000)),
        ("user-agent", "u".repeat(16_000)),
    ];
    for (name, value) in overlong {
        let mut case = Case::new(
            format!("an overlong {name} header"),
            Some(JSON),
            Some(b"{}".to_vec()),
        );
        case.header = Some((name.to_owned(), value));
        cases.push(case);
    }
    let mut with_query = Case::new("a hostile query", None, None);
    with_query.query = "limit=%00&cursor=%FF&token=%00&x=%ZZ&&==".into();
    cases.push(with_query);
    cases
}

fn random_case(rng: &mut Rng, fields: &[String]) -> Case {
    let content_type = *rng.pick(&[Some(JSON), Some(FORM), None, Some("text/plain")]);
    let body = match rng.below(4) {
        0 => Some(rng.bytes(300)),
        1 => Some(json_object(rng, fields).to_string().into_bytes()),
        2 => Some(form_body(rng, fields).into_bytes()),
        _ => None,
    };
    let mut case = Case::new("random", content_type, body);
    if rng.chance(50) {
        case.query = random_query(rng);
    }
    case
}

/// Credentials a request may carry.
struct Credentials {
    admin_token: String,
    client: TestClient,
}

fn authorization(rng: &mut Rng, creds: &Credentials) -> Option<String> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match rng.below(9) {
        0 | 1 => None,
        2 | 3 => Some(format!("Bearer {}", creds.admin_token)),
        4 => Some(format!(
            "Basic {}",
            b64(format!("{}:{}", creds.client.id, creds.client.secret.as_deref().unwrap()).as_bytes())
        )),
        5 => Some(format!("Bearer {}", pct(&rng.bytes(60)))),
        6 => Some(format!("Basic {}", b64(&rng.bytes(40)))),
        7 => Some(format!("Basic {}", rng.text(30).replace(['\r', '\n'], ""))),
        _ => Some((*rng.pick(&["Bearer", "Basic", "Bearer ", "Digest x", "Bearer a b c"])).to_owned()),
    }
}

/// Sends requests and collects what went wrong.
struct Probe<'a> {
    app: &'a TestApp,
    seed: u64,
    sent: usize,
    /// How many answers of each status, printed with `--nocapture`.
    statuses: std::collections::BTreeMap<u16, usize>,
    failures: Vec<String>,
}

impl Probe<'_> {
    /// A request's answer, checked: no 5xx, errors in one of our shapes.
    async fn send(
        &mut self,
        method: &reqwest::Method,
        path: &str,
        case: &Case,
        auth: Option<&str>,
        html_page: bool,
    ) {
        let (app, seed) = (self.app, self.seed);
        self.sent += 1;
        let failures = &mut self.failures;
        let mut url = app.url(path);
        if !case.query.is_empty() {
            url.push('?');
            url.push_str(&case.query);
        }
        let mut req = app.http.request(method.clone(), &url);
        if let Some(ct) = &case.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        if let Some((name, value)) = &case.header {
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &case.body {
            req = req.body(body.clone());
        }
        let what = || {
            let body = case
                .body
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned());
            let short = |s: &str| s.chars().take(160).collect::<String>();
            format!(
                "{method} {} [{}] content-type {:?}, auth {:?}, body {:?} (seed {seed})",
                short(&url),
                case.label,
                case.content_type.as_deref().map(short),
                auth.map(short),
                body
            )
        };
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                // The server may answer a huge body early and close; that is
                // not a server error, anything else is. Counted as status 0.
                *self.statuses.entry(0).or_default() += 1;
                if case.body.as_ref().is_none_or(|b| b.len() < HUGE) {
                    failures.push(format!("{}: no answer: {e}", what()));
                }
                return;
            }
        };
        let status = resp.status();
        *self.statuses.entry(status.as_u16()).or_default() += 1;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp.bytes().await.unwrap_or_default();
        if status.is_server_error() {
            failures.push(format!(
                "{}: {status} {}",
                what(),
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
            return;
        }
        if !status.is_client_error() {
            return;
        }
        let json_shape = content_type.starts_with("application/json")
            || content_type.starts_with("application/problem+json");
        let html = content_type.starts_with("text/html");
        let expected = if path.starts_with("/oauth2/") && !html_page {
            content_type.starts_with("application/json")
        } else {
            content_type.starts_with("application/problem+json") || (html_page && html)
        };
        if !expected {
            failures.push(format!("{}: {status} with content-type {content_type:?}", what()));
        } else if json_shape && serde_json::from_slice::<Value>(&body).is_err() {
            failures.push(format!(
                "{}: {status} says JSON but is {:?}",
                what(),
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
    }
}

#[tokio::test]
async fn hostile_requests_never_get_a_server_error_and_errors_keep_their_shape() {
    let seed = std::env::var("GATEHOUSE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6a7e_4005_5eed_0001_u64);
    // splitmix64 of the seed: distinct seeds, distinct non-zero states.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let mut rng = Rng((z ^ (z >> 31)) | 1);
    let app = TestApp::spawn().await;
    let client = app.web_client().await;
    app.create_user("root@example.com").await;
    app.cli(&[
        "users",
        "set-role",
        "--email",
        "root@example.com",
        "--role",
        "admin",
    ])
    .await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ops = operations(&doc);
    assert!(ops.len() >= 30, "only {} operations in the document", ops.len());

    // Routes outside the document: the pages mail links open, the
    // document itself, metrics, Swagger UI, and paths that do not exist.
    let page_fields = vec!["token".to_owned(), "password".to_owned(), "csrf".to_owned()];
    let signin_fields: Vec<String> = ["email", "password", "csrf_token", "request", "decision"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for (method, path, fields) in [
        (reqwest::Method::GET, "/verify-email", vec![]),
        (reqwest::Method::POST, "/verify-email", page_fields.clone()),
        (reqwest::Method::GET, "/reset-password", vec![]),
        (reqwest::Method::POST, "/reset-password", page_fields.clone()),
        (reqwest::Method::GET, "/login", vec![]),
        (reqwest::Method::POST, "/login", signin_fields.clone()),
        (reqwest::Method::GET, "/consent", vec![]),
        (reqwest::Method::POST, "/consent", signin_fields.clone()),
        (reqwest::Method::GET, "/logout", vec![]),
        (reqwest::Method::POST, "/logout", signin_fields.clone()),
        (reqwest::Method::GET, "/openapi.yaml", vec![]),
        (reqwest::Method::GET, "/metrics", vec![]),
        (reqwest::Method::GET, "/docs", vec![]),
        (reqwest::Method::GET, "/nope", vec![]),
        (reqwest::Method::POST, "/oauth2/nope", vec![]),
        (reqwest::Method::GET, "/admin", vec![]),
        (reqwest::Method::POST, "/accounts/me/nope", vec![]),
        (reqwest::Method::GET, "/%00", vec![]),
        (reqwest::Method::GET, "/.well-known/nope", vec![]),
        (reqwest::Method::DELETE, "/oauth2/token", vec![]),
        (reqwest::Method::PUT, "/accounts", vec![]),
        (reqwest::Method::GET, "/oauth2/token/extra", vec![]),
        (reqwest::Method::OPTIONS, "/oauth2/token", vec![]),
        (reqwest::Method::PATCH, "/verify-email", vec![]),
    ] {
        ops.push(Operation {
            method,
            path: path.to_owned(),
            body_type: None,
            fields,
        });
    }

    let mut probe = Probe {
        app: &app,
        seed,
        sent: 0,
        statuses: Default::default(),
        failures: Vec::new(),
    };
    for op in &ops {
        // Signed in afresh for each operation: a fuzzed logout-all or
        // account change must not blind the ones after it.
        let login = app.login(&client, "root@example.com", None).await;
        let creds = Credentials {
            admin_token: login["access_token"].as_str().unwrap().to_owned(),
            client: client.clone(),
        };
        // The pages browsers open answer in HTML, errors included; so does
        // the authorization endpoint while the client is not trusted
        // (RFC 6749 §4.1.2.1).
        let html_page = [
            "/verify-email",
            "/reset-password",
            "/login",
            "/consent",
            "/logout",
            "/oauth2/authorize",
        ]
        .contains(&op.path.as_str());
        let takes_body = op.body_type.is_some() || (html_page && op.method == reqwest::Method::POST);
        let mut cases = fixed_cases(&mut rng, &op.fields, takes_body);
        cases.extend((0..RANDOM_CASES).map(|_| random_case(&mut rng, &op.fields)));
        for case in &cases {
            let mut path = op.path.clone();
            while let Some(start) = path.find('{') {
                let end = start + path[start..].find('}').unwrap();
                path.replace_range(start..=end, &garbage_param(&mut rng));
            }
            let auth = authorization(&mut rng, &creds);
            probe
                .send(&op.method, &path, case, auth.as_deref(), html_page)
                .await;
        }
    }

    // Still standing, and still itself.
    assert_eq!(
        app.http.get(app.url("/health")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        app.http.get(app.url("/ready")).send().await.unwrap().status(),
        200
    );
    app.login(&client, "root@example.com", None).await;
    eprintln!(
        "fuzz: {} requests, seed {seed}, statuses {:?}",
        probe.sent, probe.statuses
    );
    let (sent, failures) = (probe.sent, probe.failures);
    assert!(sent > 1000, "only {sent} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
