//! ListObjectsV2 continuation tokens: the listing cursor, made opaque.

/// Encodes a cursor as an opaque continuation token.
pub fn encode_token(cursor: &str) -> String {
    cursor.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a continuation token; `None` if it was not made by [`encode_token`].
pub fn decode_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(token.get(at..at + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tokens_are_rejected() {
        assert_eq!(decode_token("zz"), None);
        assert_eq!(decode_token("abc"), None);
        assert_eq!(decode_token(&encode_token("a/é")).as_deref(), Some("a/é"));
    }
}
