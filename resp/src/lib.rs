//! RESP2, the Redis serialization protocol, as tandem's engines and load generator speak it:
//! bounded zero-copy request parsing for servers (`command`), allocation-free reply
//! encoding (`reply`), reply parsing for clients (`value`) and a small async client
//! with pipelining (`client`). Nothing here panics on input from the network.

#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod command;
pub mod reply;
pub mod value;

pub use client::{encode_request, Client, ClientError};
pub use command::{parse_command, Command, Limits, ProtocolError};
pub use reply::Reply;
pub use value::{parse_reply, REPLY_DEPTH_MAX};
