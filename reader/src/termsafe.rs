//! Text that other processes choose (comm: any process can set its own;
//! cgroup names, service names), made safe to print on a terminal: a
//! control character (newline, ESC, C1 such as CSI) or a bidi override in a
//! `dump` table could move the cursor, rewrite earlier lines or reorder
//! what the operator reads.

use std::{borrow::Cow, io};

/// Bidirectional formatting characters (reorder text on screen).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with `\` as `\\`, control characters as `\xNN` and bidi controls as
/// `\u{NNNN}` (like `ls -b`), so a table cell is one visible line.
pub fn escape(s: &str) -> Cow<'_, str> {
    let needs = |c: char| c == '\\' || c.is_control() || is_bidi_control(c);
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if is_bidi_control(c) => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A writer for serde_json output that also escapes DEL and the C1 controls
/// (U+007F..U+009F), which JSON allows raw but a terminal may act on: as
/// `\u00NN`, which every JSON parser reads back as the same character. JSON
/// structure is ASCII, so these bytes only ever occur inside strings.
pub struct JsonC1<W: io::Write> {
    inner: W,
    /// A 0xC2 lead byte whose continuation is in the next write.
    pending: bool,
}

impl<W: io::Write> JsonC1<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            pending: false,
        }
    }

    fn escaped(&mut self, code: u8) -> io::Result<()> {
        write!(self.inner, "\\u{:04x}", code)
    }
}

impl<W: io::Write> io::Write for JsonC1<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut start = 0;
        let mut i = 0;
        if self.pending && !buf.is_empty() {
            self.pending = false;
            if (0x80..=0x9f).contains(&buf[0]) {
                self.escaped(buf[0])?;
                start = 1;
                i = 1;
            } else {
                self.inner.write_all(&[0xc2])?;
            }
        }
        while i < buf.len() {
            let b = buf[i];
            if b == 0x7f {
                self.inner.write_all(&buf[start..i])?;
                self.escaped(b)?;
                i += 1;
                start = i;
            } else if b == 0xc2 {
                match buf.get(i + 1) {
                    Some(&n) if (0x80..=0x9f).contains(&n) => {
                        self.inner.write_all(&buf[start..i])?;
                        self.escaped(n)?;
                        i += 2;
                        start = i;
                    }
                    Some(_) => i += 1,
                    None => {
                        self.inner.write_all(&buf[start..i])?;
                        self.pending = true;
                        i += 1;
                        start = i;
                    }
                }
            } else {
                i += 1;
            }
        }
        self.inner.write_all(&buf[start..])?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.pending) {
            self.inner.write_all(&[0xc2])?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn table_cells_show_control_characters_as_escapes() {
        assert!(matches!(escape("nginx"), Cow::Borrowed("nginx")));
        assert_eq!(escape("a\nb\x1b[2Jc"), "a\\x0ab\\x1b[2Jc");
        assert_eq!(
            escape("a\\x0a"),
            "a\\\\x0a",
            "a literal backslash is not an escape"
        );
        assert_eq!(escape("\u{7f}\u{9b}\t\r\0"), "\\x7f\\x9b\\x09\\x0d\\x00");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape("é€😀"), "é€😀");
        let mut g = longconn_testgen::Gen::new(12);
        for _ in 0..100_000 {
            let s = g.text(&["a\u{1b}b", "\\\n", "\u{9b}é\u{202e}"]);
            let e = escape(&s);
            assert!(
                !e.chars().any(|c| c.is_control() || is_bidi_control(c)),
                "{e:?}"
            );
        }
    }

    #[test]
    fn json_escapes_del_and_c1_and_reads_back_equal() {
        let mut g = longconn_testgen::Gen::new(13);
        let mut cases: Vec<String> = vec!["\u{7f}\u{80}\u{9b}\u{9f}\u{a0}é".into()];
        cases.extend((0..20_000).map(|_| g.text(&["\u{9b}[31m", "\u{c2}\u{7f}", "é\u{85}x"])));
        for s in cases {
            let v = serde_json::json!({ "comm": s, "n": 1 });
            // Written in chunks of every size, so 0xC2 pairs straddle writes.
            for chunk in [1, 2, 3, 7, 4096] {
                let bytes = serde_json::to_vec_pretty(&v).unwrap();
                let mut w = JsonC1::new(Vec::new());
                for c in bytes.chunks(chunk) {
                    w.write_all(c).unwrap();
                }
                w.flush().unwrap();
                let out = String::from_utf8(w.inner).unwrap();
                assert!(
                    !out.chars().any(|c| ('\u{7f}'..='\u{9f}').contains(&c)),
                    "{out:?}"
                );
                let back: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(back, v);
            }
        }
    }
}
