//! Kernel-given names (comm, cgroup directory names) as text that keeps
//! them apart: bytes are not always UTF-8, and a lossy conversion would
//! turn two different invalid names into one (two series become one).

/// `bytes` unchanged when they are UTF-8; otherwise each byte that is not
/// UTF-8 as `\xNN` and `\` as `\\`, so names that differ only in invalid
/// bytes stay different (a lossy conversion made both U+FFFD).
pub fn distinct_text(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::distinct_text;

    #[test]
    fn invalid_bytes_stay_distinct_and_valid_text_is_unchanged() {
        assert_ne!(distinct_text(b"a\xff"), distinct_text(b"a\xfe"));
        assert_eq!(distinct_text(b"a\xff"), "a\\xff");
        assert_eq!(distinct_text(b"b\\\xff"), "b\\\\\\xff");
        assert_eq!(distinct_text("ok\\x2d é".as_bytes()), "ok\\x2d é");
    }
}
