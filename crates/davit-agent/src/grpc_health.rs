//! Hand-written gRPC framing and protobuf encoding of `grpc.health.v1`:
//!
//! ```text
//! message HealthCheckRequest { string service = 1; }
//! message HealthCheckResponse { ServingStatus status = 1; }   // UNKNOWN 0, SERVING 1, NOT_SERVING 2, SERVICE_UNKNOWN 3
//! ```

pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
pub const SERVING: u64 = 1;
/// gRPC status codes by number.
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

pub fn serving_status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".to_string(),
        1 => "SERVING".to_string(),
        2 => "NOT_SERVING".to_string(),
        3 => "SERVICE_UNKNOWN".to_string(),
        other => other.to_string(),
    }
}

pub fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The value and the number of bytes read; `None` when truncated or longer than 10 bytes.
pub fn decode_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

/// `HealthCheckRequest { service }`: empty (proto3 default) when `service` is empty.
pub fn encode_request(service: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if !service.is_empty() {
        out.push(1 << 3 | 2); // field 1, length-delimited
        encode_varint(service.len() as u64, &mut out);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// The `service` of a `HealthCheckRequest` (for test servers).
pub fn decode_request(message: &[u8]) -> Result<String, String> {
    let mut service = String::new();
    for_each_field(message, |field, value| {
        if let (1, FieldValue::Bytes(bytes)) = (field, value) {
            service = String::from_utf8(bytes.to_vec()).map_err(|_| "service is not UTF-8".to_string())?;
        }
        Ok(())
    })?;
    Ok(service)
}

/// `HealthCheckResponse { status }` (for test servers).
pub fn encode_response(status: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if status != 0 {
        out.push(1 << 3); // field 1, varint
        encode_varint(status, &mut out);
    }
    out
}

/// The `status` of a `HealthCheckResponse` (0, UNKNOWN, when absent); unknown fields are skipped.
pub fn decode_response(message: &[u8]) -> Result<u64, String> {
    let mut status = 0;
    for_each_field(message, |field, value| {
        if let (1, FieldValue::Varint(value)) = (field, value) {
            status = value;
        }
        Ok(())
    })?;
    Ok(status)
}

enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn for_each_field(message: &[u8], mut visit: impl FnMut(u64, FieldValue) -> Result<(), String>) -> Result<(), String> {
    let mut rest = message;
    while !rest.is_empty() {
        let (tag, read) = decode_varint(rest).ok_or("truncated field tag")?;
        rest = &rest[read..];
        let field = tag >> 3;
        if field == 0 {
            return Err("field number 0".to_string());
        }
        let value = match tag & 7 {
            0 => {
                let (value, read) = decode_varint(rest).ok_or(format!("truncated varint of field {field}"))?;
                rest = &rest[read..];
                FieldValue::Varint(value)
            }
            1 | 5 => {
                let size = if tag & 7 == 1 { 8 } else { 4 };
                rest = rest.get(size..).ok_or(format!("truncated fixed field {field}"))?;
                FieldValue::Fixed
            }
            2 => {
                let (length, read) = decode_varint(rest).ok_or(format!("truncated length of field {field}"))?;
                rest = &rest[read..];
                let length =
                    usize::try_from(length).ok().filter(|length| *length <= rest.len()).ok_or(format!("truncated field {field}"))?;
                let (bytes, after) = rest.split_at(length);
                rest = after;
                FieldValue::Bytes(bytes)
            }
            wire => return Err(format!("unsupported wire type {wire} of field {field}")),
        };
        visit(field, value)?;
    }
    Ok(())
}

/// A gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length, the message.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The first message of a gRPC body.
pub fn unframe(body: &[u8]) -> Result<&[u8], String> {
    if body.is_empty() {
        return Err("no response message".to_string());
    }
    if body.len() < 5 {
        return Err(format!("truncated grpc frame header ({} bytes)", body.len()));
    }
    if body[0] != 0 {
        return Err("compressed grpc response not supported".to_string());
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.get(5..5 + length).ok_or_else(|| format!("truncated grpc message: {} of {length} bytes", body.len() - 5))
}
