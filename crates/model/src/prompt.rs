//! Prompt normalization and hashing: raw prompts never reach the service, only this hash.
//!
//! Normalization, in order: Unicode line endings `\r\n` and `\r` become `\n`; every run of
//! whitespace (as `char::is_whitespace` defines it) becomes one ASCII space; leading and
//! trailing whitespace is removed. Case is kept: "List" and "list" are different prompts to a
//! model. The hash is the lowercase hexadecimal SHA-256 of the normalized text's UTF-8 bytes.

use sha2::{Digest, Sha256};

/// The normalized form of a prompt that [`prompt_hash`] hashes.
pub fn normalize_prompt(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    for word in prompt.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The `prompt_hash` a client sends: SHA-256 of the normalized prompt, 64 lowercase hex digits.
pub fn prompt_hash(prompt: &str) -> String {
    hex::encode(Sha256::digest(normalize_prompt(prompt).as_bytes()))
}

/// Whether `s` has the shape of a [`prompt_hash`]: 64 lowercase hexadecimal digits.
pub fn is_prompt_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_differences_hash_the_same() {
        assert_eq!(
            prompt_hash("  hello\r\n  world\t"),
            prompt_hash("hello world")
        );
        assert_ne!(prompt_hash("Hello world"), prompt_hash("hello world"));
    }

    #[test]
    fn known_vector() {
        // sha256("abc")
        assert_eq!(
            prompt_hash(" abc "),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_prompt_hash(&prompt_hash("x")));
        assert!(!is_prompt_hash("ABC"));
    }
}
