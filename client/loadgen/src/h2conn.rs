//! The lean transport (`--transport h2`): gRPC unary calls written straight onto `h2`
//! connections. The whole request frame (5-byte gRPC prefix + the encoded message) is built once
//! and every call sends a reference to it; HEADERS and the one DATA frame (END_STREAM) are queued
//! together, so the connection writes them in one go. No tower buffer, no hyper dispatch task,
//! no per-call encoder. The price: a connection lost mid-run is not re-established (its calls
//! answer UNAVAILABLE), where tonic's channel reconnects.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use tokio::net::TcpStream;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, Method, Request, Uri};
use tonic::Code;

use crate::stats::OK;

/// One HTTP/2 connection per entry; calls round-robin over them.
pub struct H2Target {
    senders: Vec<SendRequest<Bytes>>,
    uri: Uri,
    /// Per deadline class: the headers (its grpc-timeout) and the client-side deadline.
    headers: Vec<HeaderMap>,
    frame: Bytes,
    deadlines: Vec<Option<Duration>>,
}

/// The gRPC length-prefixed message: flag 0 (uncompressed), big-endian length, bytes.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

impl H2Target {
    /// `authority` is host:port; `path` the method's path; `timeouts` one (deadline, grpc-timeout
    /// value) or none per deadline class.
    pub async fn connect(
        authority: &str,
        path: &str,
        connections: usize,
        message: &[u8],
        timeouts: Vec<Option<(Duration, String)>>,
    ) -> Result<Self, String> {
        let uri: Uri = format!("http://{authority}{path}")
            .parse()
            .map_err(|e| format!("--url {authority:?}: {e}"))?;
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections {
            let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(authority))
                .await
                .map_err(|_| format!("cannot connect to {authority}: timed out"))?
                .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let (send, connection) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 24)
                .max_concurrent_reset_streams(1 << 16)
                // Every call that passes its deadline is reset by this side; h2 counts those
                // and, past 1024 by default, tears the connection down ("too_many_internal_resets").
                // An overload run resets thousands per second by design: no limit.
                .max_local_error_reset_streams(None)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(|e| format!("HTTP/2 handshake with {authority}: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            senders.push(send);
        }
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("user-agent", HeaderValue::from_static("kairos-loadgen"));
        let deadlines = timeouts
            .iter()
            .map(|t| t.as_ref().map(|(d, _)| *d))
            .collect();
        let mut per_class = Vec::with_capacity(timeouts.len());
        for timeout in timeouts {
            let mut headers = headers.clone();
            if let Some((_, value)) = timeout {
                let value =
                    HeaderValue::try_from(value).map_err(|e| format!("grpc-timeout: {e}"))?;
                headers.insert("grpc-timeout", value);
            }
            per_class.push(headers);
        }
        Ok(H2Target {
            senders,
            uri,
            headers: per_class,
            frame: grpc_frame(message),
            deadlines,
        })
    }

    /// One call of deadline class `class` on connection `index % connections`; its numeric gRPC
    /// status and, for errors, a message.
    pub async fn call(&self, index: usize, class: usize) -> (i32, Option<String>) {
        let exchange = self.exchange(index, class);
        match self.deadlines[class] {
            None => exchange.await,
            Some(deadline) => match tokio::time::timeout(deadline, exchange).await {
                Ok(outcome) => outcome,
                // Dropping the exchange resets the stream (RST_STREAM CANCEL), as gRPC clients do.
                Err(_) => (
                    Code::DeadlineExceeded as i32,
                    Some("deadline passed (client side)".into()),
                ),
            },
        }
    }

    async fn exchange(&self, index: usize, class: usize) -> (i32, Option<String>) {
        let sender = self.senders[index % self.senders.len()].clone();
        let mut sender = match sender.ready().await {
            Ok(sender) => sender,
            Err(e) => return h2_failure(&e),
        };
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers[class].clone();
        let (response, mut stream) = match sender.send_request(request, false) {
            Ok(pair) => pair,
            Err(e) => return h2_failure(&e),
        };
        if let Err(e) = stream.send_data(self.frame.clone(), true) {
            return h2_failure(&e);
        }
        let response = match response.await {
            Ok(response) => response,
            Err(e) => return h2_failure(&e),
        };
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return (
                http_status_code(parts.status),
                Some(format!("HTTP status {}", parts.status)),
            );
        }
        if let Some(outcome) = grpc_status(&parts.headers) {
            return outcome; // trailers-only: a refusal without a body
        }
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(chunk) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Err(e) => return h2_failure(&e),
            }
        }
        match body.trailers().await {
            Ok(Some(trailers)) => grpc_status(&trailers).unwrap_or((
                Code::Unknown as i32,
                Some("no grpc-status in the trailers".into()),
            )),
            Ok(None) => (
                Code::Unknown as i32,
                Some("the answer ended without trailers".into()),
            ),
            Err(e) => h2_failure(&e),
        }
    }
}

/// The grpc-status (and grpc-message) of a header block, if it has one.
pub fn grpc_status(headers: &HeaderMap) -> Option<(i32, Option<String>)> {
    let code: i32 = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if code == OK {
        return Some((OK, None));
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| percent_decode(m).chars().take(160).collect());
    Some((code, message))
}

/// gRPC's percent-encoding of grpc-message (only %XX escapes).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(v) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC code for a non-200 HTTP status (the gRPC HTTP/2 spec's table).
pub fn http_status_code(status: http::StatusCode) -> i32 {
    (match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }) as i32
}

/// An h2 error as a status: a refused stream or a lost connection is UNAVAILABLE, a cancel is
/// CANCELLED, anything else INTERNAL.
fn h2_failure(error: &h2::Error) -> (i32, Option<String>) {
    let code = match error.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        _ if error.is_io() || error.is_go_away() => Code::Unavailable,
        _ => Code::Internal,
    };
    (
        code as i32,
        Some(error.to_string().chars().take(160).collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_statuses_and_messages() {
        let frame = grpc_frame(b"abc");
        assert_eq!(&frame[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers), Some((0, None)));
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert("grpc-message", HeaderValue::from_static("queue%20full%"));
        assert_eq!(grpc_status(&headers), Some((8, Some("queue full%".into()))));
        assert_eq!(http_status_code(http::StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(http_status_code(http::StatusCode::NOT_FOUND), 12);
    }
}
