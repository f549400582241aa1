//! Sign-In with Ethereum (EIP-4361): parsing a message and checking it against what the
//! server expects. The nonce's single use is the caller's to enforce (it needs storage).

use alloy_primitives::{Address, eip191_hash_message};

use crate::Signature;

/// Why a sign-in was refused. Messages name the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiweError {
    /// The text is not an EIP-4361 message.
    #[error("not a Sign-In with Ethereum message: {0}")]
    Malformed(&'static str),
    /// The message was made for another site.
    #[error("the message is for domain {found:?}, this server is {expected:?}")]
    WrongDomain {
        /// This server's domain.
        expected: String,
        /// The message's.
        found: String,
    },
    /// The message was made for another chain.
    #[error("the message is for chain {found}, this server uses chain {expected}")]
    WrongChain {
        /// This server's chain.
        expected: u64,
        /// The message's.
        found: u64,
    },
    /// `Expiration Time` has passed.
    #[error("the message expired")]
    Expired,
    /// `Not Before` has not come yet, or `Issued At` lies in the future.
    #[error("the message is not valid yet")]
    NotYetValid,
    /// The signature is not by the message's address.
    #[error("the signature is not by {0}")]
    BadSignature(Address),
}

/// The fields of an EIP-4361 message that opentab checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiweMessage {
    /// The site asking (`host[:port]`).
    pub domain: String,
    /// The account signing in.
    pub address: Address,
    /// The chain the account is on.
    pub chain_id: u64,
    /// The server-issued nonce.
    pub nonce: String,
    /// When it was issued (unix seconds).
    pub issued_at: u64,
    /// When it stops being valid (unix seconds), if set.
    pub expiration_time: Option<u64>,
    /// When it starts being valid (unix seconds), if set.
    pub not_before: Option<u64>,
}

const PREAMBLE: &str = " wants you to sign in with your Ethereum account:";

impl SiweMessage {
    /// Parses the text of an EIP-4361 message.
    pub fn parse(text: &str) -> Result<Self, SiweError> {
        let mut lines = text.lines();
        let domain = lines.next().and_then(|l| l.strip_suffix(PREAMBLE)).filter(|d| !d.is_empty()).ok_or(
            SiweError::Malformed("first line must be '<domain> wants you to sign in with your Ethereum account:'"),
        )?;
        let address = lines
            .next()
            .and_then(|l| l.trim().parse::<Address>().ok())
            .ok_or(SiweError::Malformed("second line must be the account address"))?;
        let (mut chain_id, mut nonce, mut issued_at, mut expiration_time, mut not_before, mut version) =
            (None, None, None, None, None, None);
        for line in lines {
            let Some((tag, value)) = line.split_once(": ") else { continue };
            match tag {
                "Version" => version = Some(value),
                "Chain ID" => {
                    chain_id = Some(value.parse().map_err(|_| SiweError::Malformed("Chain ID must be a number"))?)
                }
                "Nonce" => nonce = Some(value.to_owned()),
                "Issued At" => {
                    issued_at = Some(rfc3339(value).ok_or(SiweError::Malformed("Issued At must be RFC 3339"))?)
                }
                "Expiration Time" => {
                    expiration_time =
                        Some(rfc3339(value).ok_or(SiweError::Malformed("Expiration Time must be RFC 3339"))?);
                }
                "Not Before" => {
                    not_before = Some(rfc3339(value).ok_or(SiweError::Malformed("Not Before must be RFC 3339"))?)
                }
                _ => {}
            }
        }
        if version != Some("1") {
            return Err(SiweError::Malformed("Version must be 1"));
        }
        Ok(Self {
            domain: domain.to_owned(),
            address,
            chain_id: chain_id.ok_or(SiweError::Malformed("Chain ID is missing"))?,
            // EIP-4361: at least 8 letters or digits. Anything else (a stray CR, spaces) is a
            // nonce no composed message could carry.
            nonce: nonce
                .filter(|n| n.len() >= 8 && n.bytes().all(|b| b.is_ascii_alphanumeric()))
                .ok_or(SiweError::Malformed("Nonce must be at least 8 letters or digits"))?,
            issued_at: issued_at.ok_or(SiweError::Malformed("Issued At is missing"))?,
            expiration_time,
            not_before,
        })
    }

    /// Checks domain, chain, validity times (with `skew` seconds of tolerance for clocks) and
    /// that `signature` over `text` (EIP-191 `personal_sign`) is by the message's address.
    pub fn verify(
        &self,
        text: &str,
        signature: &Signature,
        domain: &str,
        chain_id: u64,
        now: u64,
        skew: u64,
    ) -> Result<(), SiweError> {
        if self.domain != domain {
            return Err(SiweError::WrongDomain { expected: domain.to_owned(), found: self.domain.clone() });
        }
        if self.chain_id != chain_id {
            return Err(SiweError::WrongChain { expected: chain_id, found: self.chain_id });
        }
        if self.expiration_time.is_some_and(|t| now > t.saturating_add(skew)) {
            return Err(SiweError::Expired);
        }
        if self.not_before.is_some_and(|t| now.saturating_add(skew) < t) || now.saturating_add(skew) < self.issued_at {
            return Err(SiweError::NotYetValid);
        }
        match signature.recover(&eip191_hash_message(text)) {
            Ok(signer) if signer == self.address => Ok(()),
            _ => Err(SiweError::BadSignature(self.address)),
        }
    }

    /// A message for `address` to sign in to `domain` (what clients such as the CLI send).
    pub fn compose(
        domain: &str,
        uri: &str,
        address: Address,
        chain_id: u64,
        nonce: &str,
        issued_at: u64,
        expires_at: u64,
    ) -> String {
        format!(
            "{domain}{PREAMBLE}\n{}\n\nSign in to opentab to manage your session keys.\n\nURI: {uri}\nVersion: 1\n\
             Chain ID: {chain_id}\nNonce: {nonce}\nIssued At: {}\nExpiration Time: {}",
            address.to_checksum(None),
            format_rfc3339(issued_at),
            format_rfc3339(expires_at),
        )
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to unix seconds.
fn rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    // Leap seconds (`:60`) are refused: Unix time has none, and what is read must write back.
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (rest.get(1..3)?.parse::<i64>().ok()?, rest.get(4..6)?.parse::<i64>().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    // An offset can carry a time past year 9999, which four-digit years cannot write back.
    u64::try_from(secs).ok().filter(|&secs| secs <= LAST_RFC3339)
}

/// 9999-12-31T23:59:59Z, the last time RFC 3339's four-digit years can write.
const LAST_RFC3339: u64 = 253_402_300_799;

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `unix` seconds as RFC 3339 UTC (`2026-11-24T22:31:06Z`).
pub fn format_rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

// Howard Hinnant's days-from-civil algorithms (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    const NOW: u64 = 1_764_000_000; // 2025-11-24T16:00:00Z

    fn signed(domain: &str, chain: u64, issued: u64, expires: u64) -> (SigningKey, String, Signature) {
        let key = SigningKey::random();
        let text =
            SiweMessage::compose(domain, "http://localhost:8402", key.address(), chain, "n0nceabc123", issued, expires);
        let sig = key.sign_digest(&eip191_hash_message(&text));
        (key, text, sig)
    }

    #[test]
    fn a_composed_message_parses_and_verifies() -> Result<(), SiweError> {
        let (key, text, sig) = signed("localhost:8402", 31337, NOW, NOW + 600);
        let msg = SiweMessage::parse(&text)?;
        assert_eq!(msg.address, key.address());
        assert_eq!((msg.chain_id, msg.nonce.as_str(), msg.issued_at), (31337, "n0nceabc123", NOW));
        msg.verify(&text, &sig, "localhost:8402", 31337, NOW + 10, 60)
    }

    #[test]
    fn a_nonce_is_eight_or_more_letters_or_digits() {
        let (_, text, _) = signed("localhost:8402", 31337, NOW, NOW + 600);
        let with = |nonce: &str| SiweMessage::parse(&text.replace("Nonce: n0nceabc123", &format!("Nonce: {nonce}")));
        assert!(with("abcd1234").is_ok(), "exactly 8");
        // Found by fuzzing: a trailing CR counted towards the 8 and could never be composed.
        for refused in ["abcd123", "abcd123\r", "abcd-1234", "abcd 1234", "abcdé123"] {
            assert_eq!(
                with(refused).err(),
                Some(SiweError::Malformed("Nonce must be at least 8 letters or digits")),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn another_domain_chain_time_or_signer_is_refused() -> Result<(), SiweError> {
        let (_, text, sig) = signed("evil.example", 31337, NOW, NOW + 600);
        let msg = SiweMessage::parse(&text)?;
        assert!(matches!(
            msg.verify(&text, &sig, "localhost:8402", 31337, NOW, 60),
            Err(SiweError::WrongDomain { .. })
        ));

        let (_, text, sig) = signed("localhost:8402", 1, NOW, NOW + 600);
        let msg = SiweMessage::parse(&text)?;
        assert!(matches!(msg.verify(&text, &sig, "localhost:8402", 31337, NOW, 60), Err(SiweError::WrongChain { .. })));

        let (_, text, sig) = signed("localhost:8402", 31337, NOW, NOW + 600);
        let msg = SiweMessage::parse(&text)?;
        assert_eq!(msg.verify(&text, &sig, "localhost:8402", 31337, NOW + 700, 60), Err(SiweError::Expired));
        assert_eq!(msg.verify(&text, &sig, "localhost:8402", 31337, NOW - 600, 60), Err(SiweError::NotYetValid));

        // Tampering with the text (here: a later expiry) breaks the signature.
        let tampered = text.replace("Expiration Time: 2025", "Expiration Time: 2035");
        let msg = SiweMessage::parse(&tampered)?;
        assert!(matches!(
            msg.verify(&tampered, &sig, "localhost:8402", 31337, NOW, 60),
            Err(SiweError::BadSignature(_))
        ));
        Ok(())
    }

    #[test]
    fn malformed_messages_name_what_is_wrong() {
        let cases = [
            ("hello", "first line"),
            ("a.b wants you to sign in with your Ethereum account:\nnot-an-address", "second line"),
            (
                "a.b wants you to sign in with your Ethereum account:\n0x0000000000000000000000000000000000000001\n\nVersion: 1\nNonce: 12345678\nIssued At: 2025-01-01T00:00:00Z",
                "Chain ID",
            ),
            (
                "a.b wants you to sign in with your Ethereum account:\n0x0000000000000000000000000000000000000001\n\nVersion: 1\nChain ID: 1\nNonce: 12345678\nIssued At: yesterday",
                "RFC 3339",
            ),
        ];
        for (text, says) in cases {
            let err = SiweMessage::parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(says), "{err:?} should mention {says:?}");
        }
    }

    #[test]
    fn rfc3339_round_trips_and_honours_offsets() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339("2025-11-24T16:00:00Z"), Some(NOW));
        assert_eq!(rfc3339("2025-11-24T17:00:00.123+01:00"), Some(NOW));
        assert_eq!(format_rfc3339(NOW), "2025-11-24T16:00:00Z");
        assert_eq!(rfc3339(&format_rfc3339(4_102_444_800)), Some(4_102_444_800));
        assert_eq!(rfc3339("2025-13-01T00:00:00Z"), None);
        // Found by fuzzing (fuzz/corpus/siwe_message): what is read must write back.
        assert_eq!(rfc3339("9999-12-31T23:59:59Z"), Some(LAST_RFC3339));
        assert_eq!(rfc3339("9999-12-31T23:59:59-00:01"), None, "past year 9999 once in UTC");
        assert_eq!(rfc3339("2025-11-24T23:59:60Z"), None, "a leap second");
        assert_eq!(rfc3339("2025-11-24T16:00:00+24:00"), None);
        assert_eq!(rfc3339("2025-11-24T16:00:00+01:60"), None);
        assert_eq!(rfc3339("2025-02-29T00:00:00Z"), None, "2025 is no leap year");
        assert_eq!(rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(rfc3339("2100-02-29T00:00:00Z"), None, "nor is 2100");
        assert_eq!(rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400), "2000 is");
        assert_eq!(rfc3339("2025-04-31T00:00:00Z"), None);
        assert_eq!(rfc3339("2025-11-24 16:00:00Z"), None);
    }
}
