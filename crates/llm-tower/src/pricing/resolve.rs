//! Model name normalisation: strips the decorations that name the same
//! model at the same price, never a family suffix.

/// The model name without resource paths, platform forms, snapshot dates,
/// `-latest` and Gemini version suffixes; a sub-slice of `model`, so no
/// allocation.
///
/// Only whole, recognisable decorations are removed: `gpt-4o-mini` stays
/// `gpt-4o-mini`, never `gpt-4o`.
pub(super) fn normalize(model: &str) -> &str {
    let mut s = model;
    // Gemini and Vertex resource names: `models/x`, `…/publishers/google/models/x`.
    if let Some(i) = s.rfind("models/")
        && (i == 0 || s.as_bytes()[i - 1] == b'/')
    {
        s = &s[i + "models/".len()..];
    }
    // Vertex AI: `claude-sonnet-4-5@20250929`.
    if let Some((name, _)) = s.split_once('@') {
        s = name;
    }
    s = strip_bedrock(s);
    // `claude-3-5-haiku-20241022-latest` is not real, but each pass removes
    // one decoration until none is left.
    loop {
        let before = s.len();
        s = s.strip_suffix("-latest").unwrap_or(s);
        s = strip_date(s);
        if s.starts_with("gemini-") {
            s = strip_gemini_version(s);
        }
        if s.len() == before {
            return s;
        }
    }
}

/// `us.anthropic.claude-3-haiku-20240307-v1:0` → `claude-3-haiku-20240307`.
fn strip_bedrock(s: &str) -> &str {
    const PROVIDER: &str = "anthropic.";
    let Some(i) = s.find(PROVIDER) else {
        return s;
    };
    // Nothing, or a cross-region inference profile prefix.
    let region = &s[..i];
    let known_region = [
        "", "us.", "eu.", "apac.", "global.", "jp.", "au.", "us-gov.", "ca.",
    ];
    if !known_region.contains(&region) {
        return s;
    }
    let mut rest = &s[i + PROVIDER.len()..];
    // `-v1:0`, `-v2:0:200k`: the version and context-window variant.
    if let Some((name, _)) = rest.split_once(':') {
        rest = name;
    }
    if let Some(i) = rest.rfind("-v") {
        let version = &rest[i + 2..];
        if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) {
            rest = &rest[..i];
        }
    }
    rest
}

/// Strips `-2024-08-06` (OpenAI) or `-20250929` (Anthropic).
fn strip_date(s: &str) -> &str {
    let b = s.as_bytes();
    let is_date = |tail: &[u8], dashes: &[usize]| {
        tail[0] == b'-'
            && tail[1..3] == *b"20"
            && tail[1..].iter().enumerate().all(|(i, &c)| {
                if dashes.contains(&(i + 1)) {
                    c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            })
    };
    if b.len() > 11 && is_date(&b[b.len() - 11..], &[5, 8]) {
        return &s[..s.len() - 11];
    }
    if b.len() > 9 && is_date(&b[b.len() - 9..], &[]) {
        return &s[..s.len() - 9];
    }
    s
}

/// Strips Gemini's `-001`, `-preview`, `-preview-05-20`, `-exp`,
/// `-exp-0827`; not `-preview-tts` or other words, which name other models.
fn strip_gemini_version(s: &str) -> &str {
    let digits_and_dashes = |t: &str| t.bytes().all(|c| c.is_ascii_digit() || c == b'-');
    for marker in ["-preview", "-exp"] {
        if let Some(i) = s.rfind(marker) {
            let tail = &s[i + marker.len()..];
            if tail.is_empty() || (tail.starts_with('-') && digits_and_dashes(tail)) {
                return &s[..i];
            }
        }
    }
    let b = s.as_bytes();
    if b.len() > 4 && b[b.len() - 4] == b'-' && b[b.len() - 3..].iter().all(u8::is_ascii_digit) {
        return &s[..s.len() - 4];
    }
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::normalize;

    proptest! {
        #[test]
        fn never_panics_and_only_trims(
            name in prop_oneof![
                "(models/|us\\.anthropic\\.)?[a-z0-9.@:-]{0,30}(-v1:0|-20[0-9]{6}|-latest)?",
                any::<String>(),
            ]
        ) {
            let normalized = normalize(&name);
            prop_assert!(name.contains(normalized));
        }
    }

    #[test]
    fn decorations_are_stripped() {
        for (raw, want) in [
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("o3-mini-2025-01-31", "o3-mini"),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("claude-opus-4-1-20250805", "claude-opus-4-1"),
            ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
            ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
            ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
            (
                "us.anthropic.claude-sonnet-4-20250514-v1:0",
                "claude-sonnet-4",
            ),
            (
                "anthropic.claude-3-haiku-20240307-v1:0:200k",
                "claude-3-haiku",
            ),
            ("models/gemini-2.5-pro", "gemini-2.5-pro"),
            ("models/gemini-1.5-pro-002", "gemini-1.5-pro"),
            (
                "projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash-001",
                "gemini-2.0-flash",
            ),
            ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
            (
                "gemini-2.5-flash-lite-preview-09-2025",
                "gemini-2.5-flash-lite",
            ),
            ("gemini-2.5-pro-exp-03-25", "gemini-2.5-pro"),
            ("gemini-2.0-flash-exp", "gemini-2.0-flash"),
            ("gemini-1.5-flash-latest", "gemini-1.5-flash"),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
    }

    #[test]
    fn names_without_decorations_are_kept() {
        for name in [
            "gpt-4o-mini",
            "gpt-4.1-nano",
            "o3-mini",
            "claude-opus-4-1",
            "claude-3-5-haiku",
            "gpt-3.5-turbo-0125",
            "gemini-2.5-flash-preview-tts",
            "gemini-2.5-flash-8b",
            "ft:gpt-4o-mini:org::abc",
            "my-org.anthropic.thing",
            "gpt-4-001",
            "",
            "-latest",
        ] {
            let want = if name == "-latest" { "" } else { name };
            assert_eq!(normalize(name), want, "{name}");
        }
    }
}
