//! Every stable error code the server sends. `protocol.md` lists the same set;
//! a test compares the two, so adding a code means documenting it.

use std::fmt;

/// A stable, slash-namespaced error code (`area/reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The line is not valid JSON.
    PacketMalformed,
    /// The line is not valid UTF-8.
    PacketBadUtf8,
    /// The JSON value is not an object.
    PacketNotObject,
    /// An envelope field has the wrong type or is out of bounds.
    PacketBadField,
    /// The JSON nests deeper than the limit.
    PacketTooDeep,
    /// The line is longer than the limit.
    PacketTooLarge,
    /// The packet has no `op`.
    PacketMissingOp,
    /// Too many protocol errors in a row; the connection is closed.
    PacketTooManyErrors,
    /// The op is not one the server knows.
    OpUnknown,
    /// The op is known but its `ex` is missing a field or has a wrong one.
    RequestInvalid,
    /// The connection sends packets faster than its rate; see `retry_after_ms`.
    RateLimited,
    /// In `bye`: the client sent more input that needs no reply (blank
    /// lines, `pong`) than its allowance.
    RateSilentInput,
    /// The op needs a logged-in session.
    AuthRequired,
    /// Login failed (unknown account or wrong credentials; never says which).
    AuthFailed,
    /// The login method is not offered by this server.
    AuthUnsupportedMethod,
    /// The session is already logged in.
    AuthAlready,
    /// Registration is not open to this session.
    AuthRegistrationClosed,
    /// Too many failed logins for this account or address; see `retry_after_ms`.
    AuthThrottled,
    /// A signature came without a live challenge (none asked, used, or expired).
    AuthChallengeExpired,
    /// The ticket is unknown, used, expired, or bound to another server.
    TicketInvalid,
    /// The node that issued the ticket cannot be reached now; the ticket is
    /// not spent, try again later.
    TicketUnavailable,
    /// The ticket's `server` is another server that this one does not
    /// federate with.
    TicketUnknownServer,
    /// The ticket's home server answered with something this server cannot
    /// accept (an account of another server); the ticket may be spent.
    TicketBadAnswer,
    /// The op is for the account's home server: a federated user's account
    /// here has no password, keys or tickets of its own.
    AccountFederated,
    /// The public key is not a base64 Ed25519 key.
    KeyInvalid,
    /// The account was deleted; its sessions end.
    AccountDeleted,
    /// The account's name is now shown otherwise (a partition's merge made
    /// it a later claimant of its name): its sessions end.
    AccountRenamed,
    /// The account name is held by another account.
    AccountNameTaken,
    /// The account name breaks the naming rules.
    AccountInvalidName,
    /// The password breaks the password rules.
    AccountInvalidPassword,
    /// A metadata key or value breaks the metadata rules.
    MetaInvalid,
    /// No live topic has that UUID or name.
    TopicNotFound,
    /// Another topic has that name.
    TopicNameTaken,
    /// The topic name breaks the naming rules.
    TopicInvalidName,
    /// The op needs membership of the topic.
    TopicNotMember,
    /// The topic has as many members as it may.
    TopicFull,
    /// The account is in as many topics as it may be.
    AccountTooManyTopics,
    /// The topic's ACL does not allow it.
    AclDenied,
    /// The session did not log in before the login deadline.
    SessionLoginTimeout,
    /// The client was silent past the idle timeout.
    SessionIdleTimeout,
    /// The client did not read its packets fast enough.
    SessionSendqExceeded,
    /// The gzip stream from the client is corrupt; the connection is closed.
    TransportBadGzip,
    /// A WebSocket binary message: packets travel in text messages.
    TransportBinaryFrame,
    /// HTTP: the request's `Origin` may not open a WebSocket (status 403).
    HttpForbiddenOrigin,
    /// HTTP: `/ws` without a valid WebSocket upgrade (status 400 or 426).
    HttpBadUpgrade,
    /// HTTP: nothing is served at that path (status 404).
    HttpNotFound,
    /// HTTP: only `GET` and `HEAD` are served (status 405).
    HttpMethodNotAllowed,
    /// The server failed to do what was asked (nothing was changed).
    ServerInternal,
    /// The server is shutting down.
    ServerShutdown,
    /// The server holds as many connections as it may.
    ServerFull,
    /// The client's address holds as many connections as it may.
    ServerPerIpLimit,
    /// The topic keeps no message with that id (never kept, or dropped).
    MessageNotFound,
    /// The message is older than the edit window.
    MessageTooOld,
    /// The message was edited `history.max_edits_per_message` times.
    MessageTooManyEdits,
    /// `admit`: that account has no join request pending in the topic.
    AdmissionNotPending,
    /// `join`: the topic, or the account, has as many join requests
    /// pending as it may.
    AdmissionTooMany,
}

impl ErrorCode {
    /// Every code, in the order `protocol.md` lists them.
    pub const ALL: [ErrorCode; 56] = [
        ErrorCode::PacketMalformed,
        ErrorCode::PacketBadUtf8,
        ErrorCode::PacketNotObject,
        ErrorCode::PacketBadField,
        ErrorCode::PacketTooDeep,
        ErrorCode::PacketTooLarge,
        ErrorCode::PacketMissingOp,
        ErrorCode::PacketTooManyErrors,
        ErrorCode::OpUnknown,
        ErrorCode::RequestInvalid,
        ErrorCode::RateLimited,
        ErrorCode::RateSilentInput,
        ErrorCode::AuthRequired,
        ErrorCode::AuthFailed,
        ErrorCode::AuthUnsupportedMethod,
        ErrorCode::AuthAlready,
        ErrorCode::AuthRegistrationClosed,
        ErrorCode::AuthThrottled,
        ErrorCode::AuthChallengeExpired,
        ErrorCode::TicketInvalid,
        ErrorCode::TicketUnavailable,
        ErrorCode::TicketUnknownServer,
        ErrorCode::TicketBadAnswer,
        ErrorCode::KeyInvalid,
        ErrorCode::AccountDeleted,
        ErrorCode::AccountRenamed,
        ErrorCode::AccountNameTaken,
        ErrorCode::AccountInvalidName,
        ErrorCode::AccountInvalidPassword,
        ErrorCode::AccountFederated,
        ErrorCode::MetaInvalid,
        ErrorCode::TopicNotFound,
        ErrorCode::TopicNameTaken,
        ErrorCode::TopicInvalidName,
        ErrorCode::TopicNotMember,
        ErrorCode::TopicFull,
        ErrorCode::AccountTooManyTopics,
        ErrorCode::AclDenied,
        ErrorCode::SessionLoginTimeout,
        ErrorCode::SessionIdleTimeout,
        ErrorCode::SessionSendqExceeded,
        ErrorCode::TransportBadGzip,
        ErrorCode::TransportBinaryFrame,
        ErrorCode::HttpForbiddenOrigin,
        ErrorCode::HttpBadUpgrade,
        ErrorCode::HttpNotFound,
        ErrorCode::HttpMethodNotAllowed,
        ErrorCode::ServerInternal,
        ErrorCode::ServerShutdown,
        ErrorCode::ServerFull,
        ErrorCode::ServerPerIpLimit,
        ErrorCode::MessageNotFound,
        ErrorCode::MessageTooOld,
        ErrorCode::MessageTooManyEdits,
        ErrorCode::AdmissionNotPending,
        ErrorCode::AdmissionTooMany,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::PacketMalformed => "packet/malformed",
            ErrorCode::PacketBadUtf8 => "packet/bad-utf8",
            ErrorCode::PacketNotObject => "packet/not-object",
            ErrorCode::PacketBadField => "packet/bad-field",
            ErrorCode::PacketTooDeep => "packet/too-deep",
            ErrorCode::PacketTooLarge => "packet/too-large",
            ErrorCode::PacketMissingOp => "packet/missing-op",
            ErrorCode::PacketTooManyErrors => "packet/too-many-errors",
            ErrorCode::OpUnknown => "op/unknown",
            ErrorCode::RequestInvalid => "request/invalid",
            ErrorCode::RateLimited => "rate/limited",
            ErrorCode::RateSilentInput => "rate/silent-input",
            ErrorCode::AuthRequired => "auth/required",
            ErrorCode::AuthFailed => "auth/failed",
            ErrorCode::AuthUnsupportedMethod => "auth/unsupported-method",
            ErrorCode::AuthAlready => "auth/already",
            ErrorCode::AuthRegistrationClosed => "auth/registration-closed",
            ErrorCode::AuthThrottled => "auth/throttled",
            ErrorCode::AuthChallengeExpired => "auth/challenge-expired",
            ErrorCode::TicketInvalid => "ticket/invalid",
            ErrorCode::TicketUnavailable => "ticket/unavailable",
            ErrorCode::TicketUnknownServer => "ticket/unknown-server",
            ErrorCode::TicketBadAnswer => "ticket/bad-answer",
            ErrorCode::AccountFederated => "account/federated",
            ErrorCode::KeyInvalid => "key/invalid",
            ErrorCode::AccountDeleted => "account/deleted",
            ErrorCode::AccountRenamed => "account/renamed",
            ErrorCode::AccountNameTaken => "account/name-taken",
            ErrorCode::AccountInvalidName => "account/invalid-name",
            ErrorCode::AccountInvalidPassword => "account/invalid-password",
            ErrorCode::MetaInvalid => "meta/invalid",
            ErrorCode::TopicNotFound => "topic/not-found",
            ErrorCode::TopicNameTaken => "topic/name-taken",
            ErrorCode::TopicInvalidName => "topic/invalid-name",
            ErrorCode::TopicNotMember => "topic/not-member",
            ErrorCode::TopicFull => "topic/full",
            ErrorCode::AccountTooManyTopics => "account/too-many-topics",
            ErrorCode::AclDenied => "acl/denied",
            ErrorCode::SessionLoginTimeout => "session/login-timeout",
            ErrorCode::SessionIdleTimeout => "session/idle-timeout",
            ErrorCode::SessionSendqExceeded => "session/sendq-exceeded",
            ErrorCode::TransportBadGzip => "transport/bad-gzip",
            ErrorCode::TransportBinaryFrame => "transport/binary-frame",
            ErrorCode::HttpForbiddenOrigin => "http/forbidden-origin",
            ErrorCode::HttpBadUpgrade => "http/bad-upgrade",
            ErrorCode::HttpNotFound => "http/not-found",
            ErrorCode::HttpMethodNotAllowed => "http/method-not-allowed",
            ErrorCode::ServerInternal => "server/internal",
            ErrorCode::ServerShutdown => "server/shutdown",
            ErrorCode::ServerFull => "server/full",
            ErrorCode::ServerPerIpLimit => "server/per-ip-limit",
            ErrorCode::MessageNotFound => "message/not-found",
            ErrorCode::MessageTooOld => "message/too-old",
            ErrorCode::MessageTooManyEdits => "message/too-many-edits",
            ErrorCode::AdmissionNotPending => "admission/not-pending",
            ErrorCode::AdmissionTooMany => "admission/too-many",
        }
    }

    /// True for the protocol errors that count towards
    /// `limits.max_protocol_errors` (a client that cannot frame or encode).
    /// `op/unknown` is not one: a well-formed packet with an op this server
    /// does not know is likely a newer client's, and the rate limit covers
    /// floods of them.
    pub const fn is_protocol_error(self) -> bool {
        matches!(
            self,
            ErrorCode::PacketMalformed
                | ErrorCode::PacketBadUtf8
                | ErrorCode::PacketNotObject
                | ErrorCode::PacketBadField
                | ErrorCode::PacketTooDeep
                | ErrorCode::PacketTooLarge
                | ErrorCode::PacketMissingOp
                | ErrorCode::TransportBinaryFrame
                | ErrorCode::RequestInvalid
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_namespaced() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate {s}");
            let (area, reason) = s.split_once('/').unwrap();
            assert!(!area.is_empty() && !reason.is_empty());
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'/'
                    || b == b'-'),
                "{s}"
            );
        }
    }
}
