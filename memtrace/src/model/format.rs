//! Numbers for people: bytes in binary units, counts with SI suffixes.

/// Bytes in binary units, one decimal: `64.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Counts with SI suffixes: `1.2M`.
pub fn human_count(count: u64) -> String {
    match count {
        0..=9_999 => count.to_string(),
        10_000..=999_999 => format!("{:.1}k", count as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", count as f64 / 1e6),
        _ => format!("{:.1}G", count as f64 / 1e9),
    }
}

/// Text that came from outside (file, process, container names) made safe for a terminal:
/// every control character (C0, DEL, C1) is written as an escape (`\n`, `\x1b`, `\u{9b}`),
/// and so is a backslash, so the escaped text reads back unambiguously.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\\';
    if !text.chars().any(needs) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A name from the filesystem as JSON can carry it: the exact text when the bytes are UTF-8;
/// otherwise the text with each invalid sequence as U+FFFD, for display, and the exact bytes
/// in lowercase hex, so the name round-trips.
pub fn name_text(bytes: &[u8]) -> (std::sync::Arc<str>, Option<std::sync::Arc<str>>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.into(), None),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            (String::from_utf8_lossy(bytes).into(), Some(hex.into()))
        }
    }
}

/// The exact bytes of a name given as `name_text` gave it: the hex when there is one.
pub fn name_bytes(text: &str, hex: Option<&str>) -> Vec<u8> {
    match hex {
        Some(hex) if hex.len() % 2 == 0 => (0..hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect(),
        _ => text.as_bytes().to_vec(),
    }
}

/// A host path from its text and hex, as a path the filesystem knows.
pub fn host_path_of(text: &str, hex: Option<&str>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::path::PathBuf::from(std::ffi::OsString::from_vec(name_bytes(text, hex)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_hex() {
        let (text, hex) = name_text(b"/tmp/app.log");
        assert_eq!((&*text, hex), ("/tmp/app.log", None));
        let raw = b"/tmp/caf\xe9\xff.log";
        let (text, hex) = name_text(raw);
        assert_eq!(&*text, "/tmp/caf\u{fffd}\u{fffd}.log");
        let hex = hex.expect("not UTF-8: the bytes are kept");
        let back: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(back, raw);
    }

    #[test]
    fn escapes_every_control_character() {
        assert_eq!(escape_control("/tmp/app.log"), "/tmp/app.log");
        assert_eq!(
            escape_control("evil\n\x1b[31mname.log"),
            "evil\\n\\x1b[31mname.log"
        );
        assert_eq!(escape_control("a\x7fb\u{9b}c\\d"), "a\\x7fb\\u{9b}c\\\\d");
        for c in (0u32..0x20).chain([0x7f]).chain(0x80..0xa0) {
            let text = char::from_u32(c).unwrap().to_string();
            assert!(
                !escape_control(&text).chars().any(char::is_control),
                "U+{c:04x} left raw"
            );
        }
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn formats_counts() {
        assert_eq!(human_count(42), "42");
        assert_eq!(human_count(12_345), "12.3k");
        assert_eq!(human_count(1_500_000), "1.5M");
    }
}
