/// A conservative token estimate for budgeting rendered context without a tokenizer: the larger
/// of the word count and a quarter of the byte length, rounded up. BPE tokenizers of current
/// chat models produce fewer tokens than this for English text, so a budget computed with it is
/// not exceeded by the model's own count.
pub fn estimate_tokens(text: &str) -> u32 {
    let words = text.split_whitespace().count();
    let by_bytes = text.len().div_ceil(4);
    u32::try_from(words.max(by_bytes)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a b c d e"), 5);
        assert_eq!(estimate_tokens("internationalization"), 5);
    }
}
