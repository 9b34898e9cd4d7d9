//! Authenticated RESP connections between tandem's own processes (the supervisor's admin
//! endpoint, an engine's control port), with mutual challenge-response on the pair's secret.
//!
//! ```text
//! client: TANDEM.HELLO <service> <client nonce, hex>
//! server: *2 <server nonce, hex> <server proof, hex>     (the client checks it)
//! client: TANDEM.AUTH <client proof, hex>
//! server: +OK                                             (or an error, and it closes)
//! ```
//! Each proof is an HMAC of the secret over a label (service and side) and both nonces, so it
//! proves one side to the other for this connection only. Until the handshake is done the
//! server answers nothing else. A first line that looks like HTTP closes the connection at
//! once, as Redis does against cross-protocol scripting from a browser.

use auth::{hex, unhex, Nonce, Secret, NONCE_BYTES, PROOF_BYTES};
use bytes::BytesMut;

use crate::client::{Client, ClientError};
use crate::command::Command;
use crate::reply::{self, Reply};

pub const HELLO: &[u8] = b"TANDEM.HELLO";
pub const AUTH: &[u8] = b"TANDEM.AUTH";

fn label(service: &str, side: &str) -> String {
    format!("tandem/1 {service} {side}")
}

impl Client {
    /// Connects to `addr` and authenticates for `service`, all within `timeout`; the client
    /// keeps no timeout afterwards.
    pub async fn connect_authenticated(
        addr: &str,
        timeout: std::time::Duration,
        secret: &Secret,
        service: &str,
    ) -> Result<Client, ClientError> {
        let mut client = Client::connect_timeout(addr, timeout).await?;
        client.set_timeout(Some(timeout));
        client.authenticate(secret, service).await?;
        client.set_timeout(None);
        Ok(client)
    }

    /// Runs the client side of the handshake for `service` ("admin", "control").
    pub async fn authenticate(
        &mut self,
        secret: &Secret,
        service: &str,
    ) -> Result<(), ClientError> {
        let refused = |why: String| ClientError::Auth(why);
        let ours = auth::nonce();
        let ours_hex = hex(&ours);
        let reply = self
            .call(&[HELLO, service.as_bytes(), ours_hex.as_bytes()])
            .await?;
        let (theirs, proof) = match &reply {
            Reply::Array(items) if items.len() == 2 => (
                items[0].as_bytes().and_then(unhex::<NONCE_BYTES>),
                items[1].as_bytes().and_then(unhex::<PROOF_BYTES>),
            ),
            Reply::Error(e) => return Err(refused(e.clone())),
            other => {
                return Err(refused(format!(
                    "unexpected answer to TANDEM.HELLO: {other}"
                )))
            }
        };
        let (Some(theirs), Some(proof)) = (theirs, proof) else {
            return Err(refused("malformed answer to TANDEM.HELLO".into()));
        };
        if !secret.verify(&label(service, "server"), &[&ours, &theirs], &proof) {
            return Err(refused(
                "the server does not know this pair's secret (another pair, or an impostor on its port)"
                    .into(),
            ));
        }
        let mine = hex(&secret.prove(&label(service, "client"), &[&ours, &theirs]));
        match self.call(&[AUTH, mine.as_bytes()]).await? {
            Reply::Simple(_) => Ok(()),
            Reply::Error(e) => Err(refused(e)),
            other => Err(refused(format!(
                "unexpected answer to TANDEM.AUTH: {other}"
            ))),
        }
    }
}

/// The server side of the handshake, one per connection.
pub struct ServerAuth {
    service: &'static str,
    nonce: Nonce,
    client_nonce: Option<Nonce>,
    done: bool,
}

/// What the connection does after a command went through [`ServerAuth::handle`].
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// The command was part of the handshake: its reply is in the output.
    Handled,
    /// The connection is authenticated: execute the command normally.
    Pass,
    /// Send the output and close the connection; the reason is for the log.
    Close(String),
}

impl ServerAuth {
    pub fn new(service: &'static str) -> ServerAuth {
        ServerAuth {
            service,
            nonce: auth::nonce(),
            client_nonce: None,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn handle(&mut self, secret: &Secret, cmd: &Command, out: &mut BytesMut) -> Gate {
        if self.done {
            return Gate::Pass;
        }
        let name: &[u8] = cmd.arg(0).map_or(&[], |b| &b[..]);
        if name.eq_ignore_ascii_case(HELLO) && self.client_nonce.is_none() {
            let service_ok = cmd
                .arg(1)
                .is_some_and(|s| s[..] == *self.service.as_bytes());
            let nonce = cmd.arg(2).and_then(|n| unhex::<NONCE_BYTES>(n));
            let Some(client_nonce) = nonce.filter(|_| service_ok && cmd.len() == 3) else {
                reply::error(
                    out,
                    &format!("ERR usage: TANDEM.HELLO {} <nonce>", self.service),
                );
                return Gate::Close("malformed TANDEM.HELLO".into());
            };
            let proof = secret.prove(
                &label(self.service, "server"),
                &[&client_nonce, &self.nonce],
            );
            reply::array_len(out, 2);
            reply::bulk(out, hex(&self.nonce).as_bytes());
            reply::bulk(out, hex(&proof).as_bytes());
            self.client_nonce = Some(client_nonce);
            return Gate::Handled;
        }
        if name.eq_ignore_ascii_case(AUTH) {
            if let Some(client_nonce) = self.client_nonce {
                let proof: &[u8] = cmd.arg(1).map_or(&[], |b| &b[..]);
                let ok = unhex::<PROOF_BYTES>(proof).is_some_and(|p| {
                    secret.verify(
                        &label(self.service, "client"),
                        &[&client_nonce, &self.nonce],
                        &p,
                    )
                });
                if ok {
                    self.done = true;
                    reply::simple(out, "OK");
                    return Gate::Handled;
                }
                reply::error(out, "NOAUTH wrong proof: this is not the pair's secret");
                return Gate::Close("wrong proof".into());
            }
        }
        reply::error(
            out,
            &format!(
                "NOAUTH the {} port needs the pair's secret (TANDEM.HELLO first)",
                self.service
            ),
        );
        Gate::Close(format!(
            "{} before authenticating",
            String::from_utf8_lossy(name)
        ))
    }
}

/// Does the start of a connection's input look like an HTTP request? Such a connection is
/// closed without an answer (a browser tricked into posting to a local port).
pub fn looks_like_http(input: &[u8]) -> bool {
    const STARTS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"Host:",
    ];
    let line_end = input
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(input.len());
    let line = &input[..line_end];
    STARTS.iter().any(|s| line.starts_with(s))
        || line.windows(6).any(|w| w.eq_ignore_ascii_case(b"HTTP/1"))
        || input.windows(6).any(|w| w == b"\nHost:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn cmd(args: &[&[u8]]) -> Command {
        Command {
            args: args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
        }
    }

    #[test]
    fn http_is_recognised_and_resp_is_not() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(looks_like_http(b"POST /x HTTP/1.1\r\n"));
        assert!(looks_like_http(b"Host: 127.0.0.1\r\n"));
        assert!(!looks_like_http(b"*1\r\n$4\r\nPING\r\n"));
        assert!(!looks_like_http(b"PING\r\n"));
    }

    #[test]
    fn anything_but_the_handshake_is_refused_before_it() {
        let secret = Secret::from_bytes(*b"0123456789abcdef");
        let mut gate = ServerAuth::new("control");
        let mut out = BytesMut::new();
        let g = gate.handle(&secret, &cmd(&[b"TANDEM.PROMOTE", b"9"]), &mut out);
        assert!(matches!(g, Gate::Close(_)));
        assert!(out.starts_with(b"-NOAUTH"));
        // AUTH without HELLO is refused too.
        let mut gate = ServerAuth::new("control");
        let g = gate.handle(
            &secret,
            &cmd(&[b"TANDEM.AUTH", b"00"]),
            &mut BytesMut::new(),
        );
        assert!(matches!(g, Gate::Close(_)));
    }

    #[test]
    fn a_wrong_proof_closes_and_a_right_one_passes() {
        let secret = Secret::from_bytes(*b"0123456789abcdef");
        let client_nonce = auth::nonce();
        let mut gate = ServerAuth::new("admin");
        let mut out = BytesMut::new();
        let hello = cmd(&[b"TANDEM.HELLO", b"admin", hex(&client_nonce).as_bytes()]);
        assert_eq!(gate.handle(&secret, &hello, &mut out), Gate::Handled);
        let server_nonce = gate.nonce;
        let bad = Secret::from_bytes(*b"not-the-secret!!")
            .prove(&label("admin", "client"), &[&client_nonce, &server_nonce]);
        let mut wrong = ServerAuth {
            client_nonce: Some(client_nonce),
            ..ServerAuth::new("admin")
        };
        wrong.nonce = server_nonce;
        let g = wrong.handle(
            &secret,
            &cmd(&[b"TANDEM.AUTH", hex(&bad).as_bytes()]),
            &mut BytesMut::new(),
        );
        assert!(matches!(g, Gate::Close(_)));
        let good = secret.prove(&label("admin", "client"), &[&client_nonce, &server_nonce]);
        let g = gate.handle(
            &secret,
            &cmd(&[b"TANDEM.AUTH", hex(&good).as_bytes()]),
            &mut out,
        );
        assert_eq!(g, Gate::Handled);
        assert!(gate.is_done());
        assert_eq!(
            gate.handle(&secret, &cmd(&[b"STATUS"]), &mut out),
            Gate::Pass
        );
    }
}
