//! Read-your-writes across the command and query sides.
//!
//! A command's response names the aggregate it wrote and the event-store position of its last
//! event, and packs them into a consistency token (also in the `Chorus-Consistency-Token`
//! header). A `GET` given that token as `?after=<token>` is answered only once the read model
//! behind it has applied that aggregate up to that position ([`events::query::WaitFor`]), for
//! at most `wait_ms` (default 2 s, at most 5 s); if the read model is still behind, the
//! answer is 503 `not_yet` with `Retry-After`.
//!
//! The token is opaque to clients: `c1` then the hex of `<aggregate type>:<position>:<id>`.
//! Hex keeps it URL-safe without escaping; the version tag lets its form change later.

use events::query::WaitFor;

/// The response header carrying a command's consistency token.
pub const CONSISTENCY_HEADER: &str = "chorus-consistency-token";

const TAG: &str = "c1";

/// What a command wrote: enough for a query to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub position: i64,
}

impl ConsistencyToken {
    pub fn encode(&self) -> String {
        let text = format!(
            "{}:{}:{}",
            self.aggregate_type, self.position, self.aggregate_id
        );
        let mut token = String::with_capacity(TAG.len() + text.len() * 2);
        token.push_str(TAG);
        for byte in text.bytes() {
            token.push_str(&format!("{byte:02x}"));
        }
        token
    }

    /// The token `token` encodes; `None` for anything this gateway did not write.
    pub fn decode(token: &str) -> Option<Self> {
        let hex = token.strip_prefix(TAG)?;
        if hex.len() % 2 != 0 || hex.len() > 1_024 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let (aggregate_type, rest) = text.split_once(':')?;
        let (position, aggregate_id) = rest.split_once(':')?;
        let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !valid(aggregate_type) || !valid(aggregate_id) {
            return None;
        }
        Some(Self {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            position: position.parse().ok().filter(|p: &i64| *p >= 0)?,
        })
    }

    /// The wait a query carries for this token.
    pub fn wait_for(&self, timeout_ms: Option<u64>) -> WaitFor {
        WaitFor {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            position: self.position,
            timeout_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_strangers_are_refused() {
        let token = ConsistencyToken {
            aggregate_type: "order".into(),
            aggregate_id: "0195f3c4-7d2a-7b3e-9c1d-2a4b6c8d0e1f".into(),
            position: 42,
        };
        let encoded = token.encode();
        assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(ConsistencyToken::decode(&encoded), Some(token));
        for bad in ["", "c1", "c1zz", "x1616263", "c1616263", "c16f3a2d313a61"] {
            assert_eq!(ConsistencyToken::decode(bad), None, "{bad}");
        }
    }
}
