/// A conservative token estimate for budgeting rendered context without a tokenizer: the larger
/// of the word count and a quarter of the byte length, rounded up. BPE tokenizers of current
/// chat models produce fewer tokens than this for English text, so a budget computed with it is
/// not exceeded by the model's own count.
pub fn estimate_tokens(text: &str) -> u32 {
    let words = text.split_whitespace().count();
    let by_bytes = text.len().div_ceil(4);
    u32::try_from(words.max(by_bytes)).unwrap_or(u32::MAX)
}

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a character boundary.
pub fn clip_bytes(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut cut = max_bytes;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_on_character_boundaries() {
        assert_eq!(clip_bytes("abc", 5), "abc");
        assert_eq!(clip_bytes("abc", 2), "ab");
        assert_eq!(clip_bytes("éé", 3), "é");
        assert_eq!(clip_bytes("é", 0), "");
    }

    #[test]
    fn estimates() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a b c d e"), 5);
        assert_eq!(estimate_tokens("internationalization"), 5);
    }
}
