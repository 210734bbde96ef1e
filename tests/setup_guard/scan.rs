//! Finding the GStreamer element names a source file mentions, from its
//! text alone: pipeline descriptions (in Rust strings, shell lines, Markdown
//! code), `ElementFactory::make/find("…")` calls and string literals that
//! hold a single pipeline fragment.
//!
//! No Rust or shell parser: the shapes that name elements are few and
//! distinctive, and a text scan also sees pipelines that are built with
//! `format!`, split over `\` continuations or kept in shell variables.

use std::collections::HashSet;

/// One place a file names an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    pub name: String,
    /// 1-based line of the mention.
    pub line: usize,
    /// The name is certainly an element (it is linked with `!` or handed to
    /// `ElementFactory`); otherwise it only looks like one (a string literal
    /// such as `"appsink name=sink"`) and counts only if GStreamer knows an
    /// element of that name.
    pub certain: bool,
}

/// Every element mention in `text`, in order of appearance.
pub fn mentions(text: &str) -> Vec<Mention> {
    let text = blank_quoted_values(text);
    let mut found = linked_elements(&text);
    found.extend(factory_calls(&text));
    found.extend(fragment_literals(&text));
    // A name both handed to ElementFactory and written as a literal on one
    // line counts once, as certain.
    let certain: HashSet<(usize, String)> = found
        .iter()
        .filter(|m| m.certain)
        .map(|m| (m.line, m.name.clone()))
        .collect();
    let mut seen = HashSet::new();
    found.retain(|m| {
        (m.certain || !certain.contains(&(m.line, m.name.clone())))
            && seen.insert((m.line, m.name.clone(), m.certain))
    });
    found.sort_by_key(|m| m.line);
    found
}

/// The element name a pipeline token starts with, if it is one: a run of
/// `[a-z0-9_-]` starting with a letter, not followed by the `/` of caps
/// (`video/x-raw`), the `.` of a pad reference (`t.`) or the `:` of a URI.
fn element_name(token: &str) -> Option<&str> {
    let end = token
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'))
        .unwrap_or(token.len());
    let (name, rest) = token.split_at(end);
    let starts_with_letter = name.starts_with(|c: char| c.is_ascii_lowercase());
    let caps_or_reference = rest.starts_with(['/', '.', ':', '=', '(']);
    (starts_with_letter && name.len() > 1 && !caps_or_reference).then_some(name)
}

/// Replaces property values in quotes (`font-desc="Sans 10"`, also with
/// Rust's `\"`) by `Q`, so that their spaces do not split tokens. A quote
/// that opens a whole pipeline (`src="videotestsrc ! …"`) is left alone:
/// the value may not contain a `!`. Line numbers are kept.
fn blank_quoted_values(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let open = if b.get(i + 1) == Some(&b'"') {
                Some(i + 2)
            } else if b.get(i + 1) == Some(&b'\\') && b.get(i + 2) == Some(&b'"') {
                Some(i + 3)
            } else {
                None
            };
            if let Some(start) = open {
                let close = b[start..]
                    .iter()
                    .position(|&c| matches!(c, b'"' | b'!' | b'\n'))
                    .map(|p| start + p);
                if let Some(end) = close.filter(|&e| b[e] == b'"') {
                    out.push_str("=Q");
                    i = end + 1;
                    continue;
                }
            }
        }
        let c = text[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Whitespace-separated tokens with their line numbers.
fn tokens(text: &str) -> Vec<(&str, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        out.extend(line.split_whitespace().map(|t| (t, n + 1)));
    }
    out
}

/// Tokens that only continue a line (shell `\`, Rust `\n\` in a string) or
/// a comment (a pipeline in a doc comment goes on after `//!`).
fn is_continuation(token: &str) -> bool {
    matches!(
        token,
        "\\" | "\\n\\" | "\\n" | "\"" | "+" | "//" | "///" | "//!" | "#"
    )
}

/// Words before a `!` that make it a shell negation, not a link.
const SHELL_BEFORE_NEGATION: &[&str] = &[
    "if", "while", "until", "elif", "then", "do", "else", "&&", "||", "|", "[", "[[", "!", "{",
    ";", "(",
];

/// Elements on either side of a ` ! ` link. The element before a link is the
/// first word of its segment (`filesrc location=Q !`), found by walking back
/// over `property=value` words; the element after it is the next word.
fn linked_elements(text: &str) -> Vec<Mention> {
    let toks = tokens(text);
    let mut out = Vec::new();
    for (i, &(tok, _)) in toks.iter().enumerate() {
        if tok != "!" {
            continue;
        }
        let Some(&(next, next_line)) = toks[i + 1..].iter().find(|(t, _)| !is_continuation(t))
        else {
            continue;
        };
        let next = next.trim_start_matches(['"', '(', '`']);
        if next.starts_with('-') || next.is_empty() {
            continue;
        }
        let mut head = None;
        let mut chained = false;
        let mut in_parens = false;
        for &(t, line) in toks[..i].iter().rev() {
            if is_continuation(t) {
                continue;
            }
            // Prose in parentheses (`appsrc (raw frames) ! x264enc`).
            if in_parens || (t.ends_with(')') && !t.contains('(')) {
                in_parens = !t.contains('(');
                continue;
            }
            if t == "!" {
                chained = true;
                break;
            }
            if let Some(q) = t.rfind('"') {
                // The string the pipeline is written in starts here.
                head = Some((&t[q + 1..], line));
                break;
            }
            if !t.contains('=') {
                head = Some((t.trim_start_matches(['(', '\'', '`']), line));
                break;
            }
        }
        let is_link = chained
            || head
                .is_some_and(|(h, _)| !h.starts_with('-') && !SHELL_BEFORE_NEGATION.contains(&h));
        if !is_link {
            continue;
        }
        if let Some((h, line)) = head {
            if let Some(name) = element_name(h) {
                out.push(Mention {
                    name: name.to_string(),
                    line,
                    certain: true,
                });
            }
        }
        if let Some(name) = element_name(next) {
            out.push(Mention {
                name: name.to_string(),
                line: next_line,
                certain: true,
            });
        }
    }
    out
}

/// `ElementFactory::make("x")` and `ElementFactory::find("x")`.
fn factory_calls(text: &str) -> Vec<Mention> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for call in ["ElementFactory::make(\"", "ElementFactory::find(\""] {
            for (at, _) in line.match_indices(call) {
                let rest = &line[at + call.len()..];
                if let Some(name) = rest.split('"').next().and_then(element_name) {
                    if rest[name.len()..].starts_with('"') {
                        out.push(Mention {
                            name: name.to_string(),
                            line: n + 1,
                            certain: true,
                        });
                    }
                }
            }
        }
    }
    out
}

/// One-line string literals holding a lone element, with or without
/// properties: `"appsink name=sink sync=false"`, `"x264enc"`. Uncertain:
/// plenty of one-word strings are not elements.
fn fragment_literals(text: &str) -> Vec<Mention> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for literal in string_literals(line) {
            let mut words = literal.split_whitespace();
            let Some(first) = words.next() else { continue };
            let Some(name) = element_name(first).filter(|name| name.len() == first.len()) else {
                continue;
            };
            if words.all(|w| w.contains('=') && !w.starts_with(['-', '='])) {
                out.push(Mention {
                    name: name.to_string(),
                    line: n + 1,
                    certain: false,
                });
            }
        }
    }
    out
}

/// The contents of the `"…"` literals that open and close on `line`.
fn string_literals(line: &str) -> Vec<&str> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        // A `'"'` char literal is not a string.
        if b[i] == b'"' && !(i > 0 && b[i - 1] == b'\'' && b.get(i + 1) == Some(&b'\'')) {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            if j >= b.len() {
                break;
            }
            out.push(&line[start..j]);
            i = j + 1;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<(String, bool)> {
        mentions(text)
            .into_iter()
            .map(|m| (m.name, m.certain))
            .collect()
    }

    fn certain(text: &str) -> Vec<String> {
        mentions(text)
            .into_iter()
            .filter(|m| m.certain)
            .map(|m| m.name)
            .collect()
    }

    #[test]
    fn rust_pipeline_over_continuations() {
        let src = r#"let desc = format!(
            "videotestsrc num-buffers={frames} horizontal-speed=3 ! \
               timeoverlay font-desc=\"Sans 10\" ! videoconvert ! \
               video/x-raw,format=NV12 ! tee name=t \
             t. ! queue ! {chain} ! appsink name=out sync=false",
        );"#;
        assert_eq!(
            certain(src),
            [
                "videotestsrc",
                "timeoverlay",
                "videoconvert",
                "tee",
                "queue",
                "appsink"
            ]
        );
        let lines: Vec<usize> = mentions(src).iter().map(|m| m.line).collect();
        assert_eq!(lines, [2, 3, 3, 4, 5, 5]);
    }

    #[test]
    fn shell_pipelines_and_negations() {
        let src = "if ! grep -q x file; then\n\
                   [ ! -x \"$f\" ] || ! kill -0 $p && ! GST_X=1 gst-inspect-1.0 y\n\
                   find . ! -name logs\n\
                   while ! true; do :; done\n\
                   gst-launch-1.0 -v filesrc location=\"$output\" ! qtdemux ! h264parse \\\n\
                   \x20   ! avdec_h264 ! fakesink silent=false 2>&1 | grep -c x\n\
                   src=\"videotestsrc num-buffers=1 ! video/x-raw,width=\\$w ! imagefreeze num-buffers=\\$n\"\n\
                   measure x 320 240 vsockenc cid=2 port=5000 ! h264parse ! fakesink\n";
        assert_eq!(
            certain(src),
            [
                "filesrc",
                "qtdemux",
                "h264parse",
                "avdec_h264",
                "fakesink",
                "videotestsrc",
                "imagefreeze",
                "vsockenc",
                "h264parse",
                "fakesink"
            ]
        );
    }

    #[test]
    fn factory_calls_and_fragments() {
        let src = r#"let e = gst::ElementFactory::make("vsockenc").build();
            if gst::ElementFactory::find(name).is_none() {}
            let sink = "appsink name=sink sync=false";
            let q = ["queue max-size-buffers=1 leaky=downstream", "x264enc", "--log-level"];
            let msg = "connect to the host, then retry";
            let c = '"'; let s = "identity name=enc";"#;
        assert_eq!(
            names(src),
            [
                ("vsockenc".to_string(), true),
                ("appsink".to_string(), false),
                ("queue".to_string(), false),
                ("x264enc".to_string(), false),
                ("identity".to_string(), false),
            ]
        );
    }

    #[test]
    fn prose_in_parentheses_and_markdown() {
        assert_eq!(
            certain("//! One run: `appsrc (pre-generated frames) ! <encoder> !\n//! fakesink`"),
            ["appsrc", "fakesink"]
        );
    }

    #[test]
    fn rust_macros_and_comparisons_are_not_links() {
        assert!(mentions("assert!(a != b); let x = !done; println!(\"a\");").is_empty());
    }
}
