//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/...`, HTTP/1.1): the calls
//! tandem needs and nothing else (range, put, delete, transactions, leases).
//!
//! One short connection per call: tandem talks to etcd a few times a second at most (lease
//! keep-alives, a grant, a campaign step), never on a client's write path, so a pool would
//! buy nothing but state. Every call has a deadline; with several endpoints, a call that
//! cannot reach one tries the next. Keys and values are bytes (base64 on the wire); int64
//! fields arrive as JSON strings, and absent when zero (proto3), which `num` accepts.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a call to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint answered in time: etcd is down or out of reach.
    #[error("etcd unreachable ({0})")]
    Unreachable(String),
    /// etcd answered, and refused (an expired lease, a malformed request).
    #[error("etcd refused: {0}")]
    Refused(String),
    /// etcd answered something this client cannot read.
    #[error("unexpected answer from etcd: {0}")]
    Garbled(String),
}

impl Error {
    /// etcd could not be reached at all (as opposed to answering no).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable(_))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One key as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Kv {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// What a transaction compares, on one key.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key's version (0: the key does not exist).
    Version(String, i64),
    CreateRevision(String, i64),
    ModRevision(String, i64),
    Value(String, Vec<u8>),
}

/// What a transaction does.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Get(String),
    Delete(String),
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
}

/// A transaction's outcome: whether the comparisons held, and the keys its `Get`s read (in
/// order, one list per `Get` of the branch that ran).
#[derive(Debug)]
pub struct TxnOutcome {
    pub succeeded: bool,
    pub revision: i64,
    pub gets: Vec<Vec<Kv>>,
}

/// Where etcd is: one or more `http://host:port` endpoints (comma-separated in `--etcd`).
#[derive(Clone, Debug)]
pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
}

impl Client {
    /// `urls`: `http://127.0.0.1:2379` or several, comma-separated. Only plain HTTP: tandem's
    /// etcd is on a trusted network (TLS is etcd's own configuration, not done here).
    pub fn new(urls: &str) -> std::result::Result<Client, String> {
        let mut endpoints = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let rest = url.strip_prefix("http://").unwrap_or(url);
            if url.starts_with("https://") {
                return Err(format!(
                    "{url}: https is not supported; use http://host:port"
                ));
            }
            let hostport = rest.trim_end_matches('/');
            if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
                return Err(format!("{url}: expected http://host:port"));
            }
            endpoints.push(hostport.to_string());
        }
        if endpoints.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        Ok(Client {
            endpoints,
            timeout: Duration::from_secs(2),
        })
    }

    /// The deadline of each call (2 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn endpoints(&self) -> String {
        self.endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The key, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        let v = self
            .call("/v3/kv/range", &json!({ "key": b64(key) }))
            .await?;
        Ok(kvs(&v)?.into_iter().next())
    }

    /// The key's value read as a JSON record, if the key exists; a value that is not one is
    /// `Garbled`, naming the key.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value)
                .map(Some)
                .map_err(|e| Error::Garbled(format!("{key} is not the record expected: {e}"))),
        }
    }

    /// Every key under `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>> {
        let v = self
            .call(
                "/v3/kv/range",
                &json!({ "key": b64(prefix), "range_end": b64_bytes(&prefix_end(prefix)) }),
            )
            .await?;
        kvs(&v)
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64> {
        let v = self
            .call("/v3/kv/put", &put_json(key, value, lease))
            .await?;
        Ok(header_revision(&v))
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))
            .await?;
        Ok(())
    }

    /// If every comparison holds, the `success` operations, else the `failure` ones, all at
    /// one revision.
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnOutcome> {
        let body = json!({
            "compare": compare.iter().map(compare_json).collect::<Vec<_>>(),
            "success": success.iter().map(op_json).collect::<Vec<_>>(),
            "failure": failure.iter().map(op_json).collect::<Vec<_>>(),
        });
        let v = self.call("/v3/kv/txn", &body).await?;
        let succeeded = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        let mut gets = Vec::new();
        if let Some(responses) = v.get("responses").and_then(Value::as_array) {
            for r in responses {
                if let Some(range) = r.get("response_range") {
                    gets.push(kvs(range)?);
                }
            }
        }
        Ok(TxnOutcome {
            succeeded,
            revision: header_revision(&v),
            gets,
        })
    }

    /// A new lease of `ttl_s` seconds; its id.
    pub async fn lease_grant(&self, ttl_s: i64) -> Result<i64> {
        let v = self
            .call("/v3/lease/grant", &json!({ "TTL": ttl_s }))
            .await?;
        let id = num(v.get("ID"));
        if id == 0 {
            return Err(Error::Garbled(format!("lease grant without an ID: {v}")));
        }
        Ok(id)
    }

    /// Keeps the lease alive; its remaining TTL in seconds, or `Refused` once it expired.
    pub async fn lease_keepalive(&self, id: i64) -> Result<i64> {
        let v = self
            .call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))
            .await?;
        let ttl = num(v.get("result").and_then(|r| r.get("TTL")));
        if ttl <= 0 {
            return Err(Error::Refused(format!("lease {id:x} has expired")));
        }
        Ok(ttl)
    }

    /// Ends the lease now: every key attached to it is deleted.
    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await?;
        Ok(())
    }

    /// A watch on `key` (or every key under it, with `prefix`), registered when this
    /// returns: every change after it is an event [`Watch::changed`] returns for. Read the
    /// state after opening it, and wait on it while the state is not what you wait for.
    pub async fn watch(&self, key: &str, prefix: bool) -> Result<Watch> {
        let mut create = json!({ "key": b64(key) });
        if prefix {
            create["range_end"] = json!(b64_bytes(&prefix_end(key)));
        }
        let body = json!({ "create_request": create }).to_string();
        let mut last = String::new();
        for endpoint in &self.endpoints {
            let opened = tokio::time::timeout(self.timeout, async {
                let mut stream = TcpStream::connect(endpoint.as_str()).await?;
                let request = format!(
                    "POST /v3/watch HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(request.as_bytes()).await?;
                let mut watch = Watch {
                    stream,
                    raw: Vec::new(),
                    head_done: false,
                    json: Vec::new(),
                };
                // The first message says the watch is created.
                watch.next_message().await?;
                Ok::<_, std::io::Error>(watch)
            })
            .await;
            match opened {
                Ok(Ok(watch)) => return Ok(watch),
                Ok(Err(e)) => last = format!("{endpoint}: {e}"),
                Err(_) => last = format!("{endpoint}: no answer in {:?}", self.timeout),
            }
        }
        Err(Error::Unreachable(last))
    }

    /// One JSON call, on the first endpoint that answers.
    async fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let body = body.to_string();
        let mut last = String::new();
        for endpoint in &self.endpoints {
            match tokio::time::timeout(self.timeout, post(endpoint, path, &body)).await {
                Ok(Ok((200, v))) => return Ok(v),
                Ok(Ok((status, v))) => {
                    let message = v
                        .get("error")
                        .or_else(|| v.get("message"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    // etcd without a leader answers 503 and the like: out of service.
                    if status >= 500 {
                        last = format!("{endpoint}: {status} {message}");
                        continue;
                    }
                    return Err(Error::Refused(format!("{path}: {message}")));
                }
                Ok(Err(e)) => last = format!("{endpoint}: {e}"),
                Err(_) => last = format!("{endpoint}: no answer in {:?}", self.timeout),
            }
        }
        Err(Error::Unreachable(last))
    }
}

/// An open watch (etcd's streaming `POST /v3/watch`: chunked, one JSON message per change).
pub struct Watch {
    stream: TcpStream,
    /// Bytes read and not yet taken out of their chunks.
    raw: Vec<u8>,
    head_done: bool,
    /// Chunk payloads not yet parsed into a whole message.
    json: Vec<u8>,
}

impl Watch {
    /// Waits for the next change of the watched keys.
    pub async fn changed(&mut self) -> std::io::Result<()> {
        loop {
            let message = self.next_message().await?;
            let result = message.get("result").unwrap_or(&message);
            if result.get("events").is_some() {
                return Ok(());
            }
            if result.get("canceled").and_then(Value::as_bool) == Some(true) {
                return Err(std::io::Error::other(format!("watch canceled: {message}")));
            }
        }
    }

    /// The next whole JSON message of the stream.
    async fn next_message(&mut self) -> std::io::Result<Value> {
        let invalid = |e: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
        loop {
            if !self.head_done {
                if let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
                    if !head.starts_with("http/1.1 200") || !head.contains("chunked") {
                        return Err(invalid(&format!("watch refused: {head}")));
                    }
                    self.raw.drain(..end + 4);
                    self.head_done = true;
                }
            }
            if self.head_done {
                // Move whole chunks' payloads over to `json`.
                while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
                    let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
                    let size =
                        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                            .map_err(|_| invalid("bad chunk size"))?;
                    if size == 0 {
                        return Err(invalid("the watch stream ended"));
                    }
                    if self.raw.len() < line_end + 2 + size + 2 {
                        break;
                    }
                    self.json
                        .extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
                    self.raw.drain(..line_end + 2 + size + 2);
                }
                let mut values =
                    serde_json::Deserializer::from_slice(&self.json).into_iter::<Value>();
                match values.next() {
                    Some(Ok(v)) => {
                        let used = values.byte_offset();
                        self.json.drain(..used);
                        return Ok(v);
                    }
                    Some(Err(e)) if !e.is_eof() => return Err(invalid(&e.to_string())),
                    _ => {}
                }
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "etcd closed the watch",
                ));
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }
}

/// One HTTP/1.1 POST on a new connection; the status and the JSON body.
async fn post(endpoint: &str, path: &str, body: &str) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(endpoint).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(1024);
    stream.read_to_end(&mut response).await?;
    parse_response(&response).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Status and JSON body of a whole HTTP/1.1 response (Content-Length, chunked, or to EOF).
fn parse_response(raw: &[u8]) -> std::result::Result<(u16, Value), String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = &raw[head_end + 4..];
    let mut dechunked = Vec::new();
    if chunked {
        loop {
            let line_end = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk")?;
            let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size")?;
            body = &body[line_end + 2..];
            if size == 0 {
                break;
            }
            if body.len() < size {
                return Err("truncated chunk".into());
            }
            dechunked.extend_from_slice(&body[..size]);
            body = body.get(size + 2..).unwrap_or(&[]);
        }
        body = &dechunked;
    }
    // A streaming call (keepalive) may wrap several objects; the first is the answer.
    let value = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
        .ok_or("empty body")?
        .map_err(|e| format!("body is not JSON: {e}"))?;
    Ok((status, value))
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn b64_bytes(b: &[u8]) -> String {
    B64.encode(b)
}

/// The end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// An int64 field: a string or a number, absent when zero.
fn num(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn header_revision(v: &Value) -> i64 {
    num(v.get("header").and_then(|h| h.get("revision")))
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    create_revision: Value,
    #[serde(default)]
    mod_revision: Value,
    #[serde(default)]
    version: Value,
    #[serde(default)]
    lease: Value,
}

fn kvs(v: &Value) -> Result<Vec<Kv>> {
    let Some(list) = v.get("kvs") else {
        return Ok(Vec::new());
    };
    let raw: Vec<RawKv> =
        serde_json::from_value(list.clone()).map_err(|e| Error::Garbled(format!("kvs: {e}")))?;
    raw.into_iter()
        .map(|r| {
            let decode = |s: &str| {
                B64.decode(s)
                    .map_err(|e| Error::Garbled(format!("base64: {e}")))
            };
            Ok(Kv {
                key: decode(&r.key)?,
                value: decode(&r.value)?,
                create_revision: num(Some(&r.create_revision)),
                mod_revision: num(Some(&r.mod_revision)),
                version: num(Some(&r.version)),
                lease: num(Some(&r.lease)),
            })
        })
        .collect()
}

fn put_json(key: &str, value: &[u8], lease: i64) -> Value {
    let mut put = json!({ "key": b64(key), "value": b64_bytes(value) });
    if lease != 0 {
        put["lease"] = json!(lease.to_string());
    }
    put
}

fn compare_json(c: &Compare) -> Value {
    let (key, target, field, value) = match c {
        Compare::Version(k, v) => (k, "VERSION", "version", json!(v.to_string())),
        Compare::CreateRevision(k, v) => (k, "CREATE", "create_revision", json!(v.to_string())),
        Compare::ModRevision(k, v) => (k, "MOD", "mod_revision", json!(v.to_string())),
        Compare::Value(k, v) => (k, "VALUE", "value", json!(b64_bytes(v))),
    };
    let mut c = json!({ "key": b64(key), "target": target, "result": "EQUAL" });
    c[field] = value;
    c
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => json!({ "request_put": put_json(key, value, *lease) }),
        Op::Get(key) => json!({ "request_range": { "key": b64(key) } }),
        Op::Delete(key) => json!({ "request_delete_range": { "key": b64(key) } }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_length_chunked_or_to_eof() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\":\"1\"}";
        assert_eq!(parse_response(plain).unwrap(), (200, json!({"a": "1"})));
        let chunked =
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n5\r\n:\"1\"}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (503, json!({"a": "1"})));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn the_prefix_range_ends_past_every_key_under_it() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(num(Some(&json!("42"))), 42);
        assert_eq!(num(None), 0);
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            Client::new("http://127.0.0.1:2379").unwrap().endpoints(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            Client::new("127.0.0.1:1, http://h:2/")
                .unwrap()
                .endpoints
                .len(),
            2
        );
        assert!(Client::new("https://h:1").is_err());
        assert!(Client::new("").is_err());
        assert!(Client::new("http://nohost").is_err());
    }
}
