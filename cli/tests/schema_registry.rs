//! `headroom schemas register` against a fake Confluent Schema Registry (the real one is a Java
//! service that cannot be installed here), named as such. The fake keeps the registry's rules
//! that matter to the command: a chosen id is accepted only in IMPORT mode, an id holds one
//! schema, and a lookup by schema answers the subject's id and version or 40401/40403.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};

use headroom_schemas::Catalogue;
use serde_json::{json, Value};

#[derive(Default)]
struct State {
    /// subject -> (version, id, schema JSON)
    subjects: HashMap<String, Vec<(u32, u32, Value)>>,
    ids: HashMap<u32, Value>,
    modes: HashMap<String, String>,
    next_id: u32,
    imports: usize,
}

struct FakeRegistry {
    url: String,
    state: Arc<Mutex<State>>,
}

fn parse(schema: &str) -> Value {
    serde_json::from_str(schema).unwrap_or(Value::Null)
}

fn handle(state: &Mutex<State>, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("PUT", ["mode", subject]) => {
            let mode = body["mode"].as_str().unwrap_or("").to_owned();
            if mode == "IMPORT" {
                st.imports += 1;
            }
            st.modes.insert((*subject).to_owned(), mode.clone());
            (200, json!({"mode": mode}))
        }
        ("GET", ["schemas", "ids", id]) => match id.parse::<u32>().ok().and_then(|i| st.ids.get(&i)) {
            Some(s) => (200, json!({"schema": s.to_string()})),
            None => (404, json!({"error_code": 40403, "message": "Schema not found"})),
        },
        ("POST", ["subjects", subject]) => {
            let want = parse(body["schema"].as_str().unwrap_or(""));
            let Some(versions) = st.subjects.get(*subject) else {
                return (404, json!({"error_code": 40401, "message": "Subject not found"}));
            };
            match versions.iter().find(|(_, _, s)| *s == want) {
                Some((v, id, s)) => (200, json!({"subject": subject, "version": v, "id": id, "schema": s.to_string()})),
                None => (404, json!({"error_code": 40403, "message": "Schema not found"})),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let schema = parse(body["schema"].as_str().unwrap_or(""));
            let import = st.modes.get(*subject).map(String::as_str) == Some("IMPORT");
            let id = match body["id"].as_u64() {
                Some(_) if !import => {
                    return (422, json!({"error_code": 42205, "message": "Overriding schema id is only allowed in IMPORT mode"}))
                }
                Some(id) => id as u32,
                None => {
                    st.next_id += 1;
                    st.next_id
                }
            };
            if st.ids.get(&id).is_some_and(|s| *s != schema) {
                return (422, json!({"error_code": 42207, "message": "id is used by another schema"}));
            }
            let versions = st.subjects.entry((*subject).to_owned()).or_default();
            let version = body["version"].as_u64().map_or(versions.len() as u32 + 1, |v| v as u32);
            versions.push((version, id, schema.clone()));
            st.ids.insert(id, schema);
            (200, json!({"id": id}))
        }
        _ => (404, json!({"error_code": 404, "message": format!("no route {method} {path}")})),
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) {
    let mut buf = Vec::new();
    while let Some(req) = headroom_testkit::ops::read_http_request(&mut conn, &mut buf) {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let (status, reply) = handle(state, &req.method, &req.path, &body);
        let text = reply.to_string();
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

impl FakeRegistry {
    fn start(state: State) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        FakeRegistry { url, state }
    }
}

fn register(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["schemas", "register", "--registry-url", url])
        .output()
        .expect("headroom runs")
}

#[test]
fn registers_the_catalogue_under_its_pinned_ids_once() {
    let reg = FakeRegistry::start(State { next_id: 1, ..State::default() });
    let out = register(&reg.url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let cat = Catalogue::builtin();
    let n = cat.entries().len();
    assert!(stdout.contains(&format!("{n} schema versions registered, 0 already present")), "{stdout}");
    {
        let st = reg.state.lock().unwrap();
        for e in cat.entries() {
            let versions = &st.subjects[&e.subject];
            let (v, id, schema) = versions.iter().find(|(_, id, _)| *id == e.id).expect("pinned id");
            assert_eq!(*v, e.version, "{} keeps its version", e.subject);
            assert_eq!(*id, e.id);
            assert_eq!(*schema, parse(e.text), "{} v{}: the catalogue's text", e.subject, e.version);
        }
        assert_eq!(st.ids.len(), n);
        assert_eq!(st.imports, n, "one IMPORT window per version written");
        assert!(st.modes.values().all(|m| m == "READWRITE"), "every subject is writable again: {:?}", st.modes);
    }
    // Idempotent: the second run finds everything.
    let again = register(&reg.url);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("0 schema versions registered, {n} already present")), "{stdout}");
}

#[test]
fn a_registry_that_holds_a_schema_under_another_id_is_an_error_naming_both() {
    let cat = Catalogue::builtin();
    let e = cat.latest("telemetry.raw-value").expect("telemetry subject");
    let mut state = State { next_id: 1000, ..State::default() };
    state.subjects.insert(e.subject.clone(), vec![(1, 999, parse(e.text))]);
    state.ids.insert(999, parse(e.text));
    let reg = FakeRegistry::start(state);
    let out = register(&reg.url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("telemetry.raw-value") && stderr.contains("999") && stderr.contains(&e.id.to_string()), "{stderr}");

    // An id the registry gives to another schema is refused too.
    let other = cat.latest("features-value").expect("features subject");
    let mut state = State { next_id: 1000, ..State::default() };
    state.ids.insert(other.id, json!({"type": "string"}));
    let reg = FakeRegistry::start(state);
    let out = register(&reg.url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("id {} holds another schema", other.id)), "{stderr}");

    let bad = register("localhost:8081");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an http:// or https:// URL"));
}
