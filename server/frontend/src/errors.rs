//! Typed refusals: a gRPC status, a short message, and the reason label metrics use
//! (the same labels as the Python side's `KairosError.reason`).

use tonic::{Code, Status};

/// Longest user-supplied string echoed in a message (clients cap metadata near 8 KB).
pub const ECHO_LIMIT: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    pub reason: &'static str,
}

impl Refusal {
    pub fn new(code: Code, reason: &'static str, message: String) -> Self {
        Refusal {
            code,
            message,
            reason,
        }
    }
    pub fn invalid(message: String) -> Self {
        Self::new(Code::InvalidArgument, "invalid_argument", message)
    }
    pub fn not_found(message: String) -> Self {
        Self::new(Code::NotFound, "not_found", message)
    }
    pub fn unavailable(message: String) -> Self {
        Self::new(Code::Unavailable, "unavailable", message)
    }
    pub fn refused(message: String) -> Self {
        Self::new(Code::ResourceExhausted, "refused_admission", message)
    }
    pub fn limit(message: String) -> Self {
        Self::new(Code::ResourceExhausted, "limit_exceeded", message)
    }
    pub fn deadline(message: String) -> Self {
        Self::new(Code::DeadlineExceeded, "deadline_exceeded", message)
    }
    pub fn internal(message: String) -> Self {
        Self::new(Code::Internal, "internal", message)
    }
    pub fn status(&self) -> Status {
        Status::new(self.code, self.message.clone())
    }
}

/// At most `ECHO_LIMIT` characters of a user-supplied string, marked when cut.
pub fn short(text: &str) -> String {
    if text.len() <= ECHO_LIMIT {
        return text.to_string();
    }
    let mut end = ECHO_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...({} bytes)", &text[..end], text.len())
}

/// The status code's name as gRPC spells it (INVALID_ARGUMENT), for stream error messages.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_pass_whole_and_long_ones_are_cut() {
        assert_eq!(short("mlp256"), "mlp256");
        let long = "x".repeat(10_000);
        let cut = short(&long);
        assert!(cut.len() < 100, "{}", cut.len());
        assert!(cut.ends_with("...(10000 bytes)"));
    }

    #[test]
    fn cutting_respects_utf8_boundaries() {
        let long = "é".repeat(100);
        assert!(short(&long).starts_with("éé"));
    }
}
