//! A client session: the login state machine and the reply rule.
//!
//! Every request gets exactly one reply (`ack`, `error`, or the answer that
//! carries data), with `ex.for` set to the request's `id` when it had one,
//! queued in request order on the connection's outbound queue.

use crate::config::Config;
use crate::proto::request::{AuthRequest, Request, SessionOp};
use crate::proto::{ErrorCode, Packet, reply};
use crate::router::Outbound;

/// What the connection should do after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep reading.
    Continue,
    /// The final packets are queued: close the connection.
    Close(CloseReason),
}

/// Why a session ended, for the connection log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `quit`.
    Quit,
    /// Too many protocol errors in a row.
    TooManyErrors,
    /// The outbound queue overflowed.
    SendqExceeded,
}

impl CloseReason {
    /// Short text for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::TooManyErrors => "too many protocol errors",
            CloseReason::SendqExceeded => "send queue exceeded",
        }
    }
}

/// Settings every session reads.
#[derive(Debug, Clone)]
pub struct Context {
    /// This server's name.
    pub server_name: String,
    /// Login methods offered.
    pub auth_methods: Vec<String>,
    /// JSON nesting limit.
    pub max_json_depth: usize,
    /// Protocol errors in a row before closing.
    pub max_protocol_errors: u32,
    /// Line limit, for messages.
    pub max_line_bytes: usize,
}

impl Context {
    /// From the configuration.
    pub fn new(config: &Config) -> Self {
        Self {
            server_name: config.server.name.clone(),
            auth_methods: config.auth.methods.clone(),
            max_json_depth: config.limits.max_json_depth,
            max_protocol_errors: config.limits.max_protocol_errors,
            max_line_bytes: config.limits.max_line_bytes,
        }
    }
}

/// One connection's session state.
pub struct Session<'a> {
    ctx: &'a Context,
    out: Outbound,
    account: Option<String>,
    errors_in_row: u32,
}

impl<'a> Session<'a> {
    /// A new, not yet logged-in session replying on `out`.
    pub fn new(ctx: &'a Context, out: Outbound) -> Self {
        Self {
            ctx,
            out,
            account: None,
            errors_in_row: 0,
        }
    }

    /// The logged-in account, if any.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// Handles one line from the client.
    pub async fn handle_line(&mut self, line: &[u8]) -> Outcome {
        let packet = match Packet::decode(line, self.ctx.max_json_depth) {
            Ok(p) => p,
            Err(e) => return self.fail(e.id.as_deref(), e.code, e.message),
        };
        let id = packet.id.as_deref();
        let request = match Request::parse(&packet) {
            Ok(r) => r,
            Err(e) => return self.fail(id, e.code, e.message),
        };
        self.errors_in_row = 0;
        match request {
            Request::Ping => self.reply(reply::pong(id)),
            Request::Pong => Outcome::Continue,
            Request::Quit => match self.reply(reply::ack(id)) {
                Outcome::Continue => Outcome::Close(CloseReason::Quit),
                closed => closed,
            },
            Request::Auth(auth) => self.handle_auth(id, auth).await,
            Request::Session(op) => match self.account {
                None => self.reply(reply::error(
                    id,
                    ErrorCode::AuthRequired,
                    "log in first (op \"auth\")",
                )),
                Some(_) => self.handle_session_op(id, op),
            },
        }
    }

    /// Handles a line that was over the limit and discarded.
    pub fn handle_too_long(&mut self) -> Outcome {
        let limit = self.ctx.max_line_bytes;
        self.fail(
            None,
            ErrorCode::PacketTooLarge,
            format!("line longer than {limit} bytes; discarded"),
        )
    }

    async fn handle_auth(&mut self, id: Option<&str>, auth: AuthRequest) -> Outcome {
        if self.account.is_some() {
            return self.reply(reply::error(
                id,
                ErrorCode::AuthAlready,
                "already logged in",
            ));
        }
        if !self.ctx.auth_methods.iter().any(|m| m == auth.method()) {
            return self.reply(reply::error(
                id,
                ErrorCode::AuthUnsupportedMethod,
                format!("login method {:?} is not offered here", auth.method()),
            ));
        }
        // No account store is attached to this build yet, so no credential
        // can match: every attempt fails the same way an unknown user does.
        self.reply(reply::error(id, ErrorCode::AuthFailed, "login failed"))
    }

    fn handle_session_op(&mut self, id: Option<&str>, op: SessionOp) -> Outcome {
        self.reply(reply::error(
            id,
            ErrorCode::OpUnknown,
            format!("op {op:?} is not available on this server"),
        ))
    }

    /// Replies with an error; counts protocol errors and closes after too many.
    fn fail(&mut self, id: Option<&str>, code: ErrorCode, message: String) -> Outcome {
        if let Outcome::Close(r) = self.reply(reply::error(id, code, message)) {
            return Outcome::Close(r);
        }
        if !code.is_protocol_error() {
            self.errors_in_row = 0;
            return Outcome::Continue;
        }
        self.errors_in_row += 1;
        if self.errors_in_row >= self.ctx.max_protocol_errors {
            let max = self.ctx.max_protocol_errors;
            let _ = self.out.push(&reply::bye(
                ErrorCode::PacketTooManyErrors,
                format!("{max} protocol errors in a row; closing"),
            ));
            return Outcome::Close(CloseReason::TooManyErrors);
        }
        Outcome::Continue
    }

    fn reply(&mut self, packet: Packet) -> Outcome {
        match self.out.push(&packet) {
            Ok(()) => Outcome::Continue,
            Err(_) => Outcome::Close(CloseReason::SendqExceeded),
        }
    }
}
