//! Human durations as written in specs: `500ms`, `5s`, `1m30s`, `2h`.

use std::fmt;

/// A span of time written as text in specs (`"5s"`, `"1m30s"`) and serialized the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; write a number with a unit, e.g. 500ms, 5s, 1m30s, 2h")]
pub struct ParseDurationError {
    pub input: String,
    pub reason: &'static str,
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }
    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// Parses `500ms`, `5s`, `1m30s`, `2h`, `1.5s`. A bare `0` is allowed; other bare numbers are not.
    pub fn parse(input: &str) -> Result<Duration, ParseDurationError> {
        let err = |reason| ParseDurationError { input: input.to_string(), reason };
        let text = input.trim();
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        if text == "0" {
            return Ok(Duration::default());
        }
        let mut total_nanos: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            if number_len == 0 {
                return Err(err(if rest.starts_with('-') { "it is negative" } else { "expected a number" }));
            }
            let number: f64 = rest[..number_len].parse().map_err(|_| err("the number is malformed"))?;
            rest = &rest[number_len..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let unit_nanos: f64 = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                "d" => 86400e9,
                "" => return Err(err("a unit is missing")),
                _ => return Err(err("unknown unit (use ns, us, ms, s, m, h or d)")),
            };
            rest = &rest[unit_len..];
            total_nanos = total_nanos.saturating_add((number * unit_nanos) as u128);
        }
        let nanos = u64::try_from(total_nanos).map_err(|_| err("it is too large"))?;
        Ok(Duration(std::time::Duration::from_nanos(nanos)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return write!(f, "0s");
        }
        if !nanos.is_multiple_of(1_000_000_000) {
            if nanos.is_multiple_of(1_000_000) {
                return write!(f, "{}ms", nanos / 1_000_000);
            }
            return write!(f, "{}ns", nanos);
        }
        let mut secs = self.0.as_secs();
        let hours = secs / 3600;
        secs %= 3600;
        let minutes = secs / 60;
        secs %= 60;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        if secs > 0 {
            write!(f, "{secs}s")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 5s or 1m30s")
            }
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<Duration, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!("invalid duration {v}: a unit is missing; write e.g. {v}s or {v}ms")))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                if v < 0 { Err(E::custom(format!("invalid duration {v}: it is negative"))) } else { self.visit_u64(v as u64) }
            }
        }
        deserializer.deserialize_newtype_struct(DURATION_NEWTYPE_NAME, Visitor)
    }
}

/// The newtype name a spanned deserializer recognises to parse durations itself (and recover on errors).
pub const DURATION_NEWTYPE_NAME: &str = "davit::Duration";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, printed) in [("500ms", "500ms"), ("5s", "5s"), ("1m30s", "1m30s"), ("2h", "2h"), ("1.5s", "1500ms"), ("0", "0s")] {
            assert_eq!(Duration::parse(text).unwrap().to_string(), printed, "{text}");
        }
        for bad in ["", "5", "-1s", "5 parsecs", "s"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
    }
}
