//! Errors in a pipeline definition, each with the file, the line and a hint, so that
//! `stratus validate` can report all of them at once.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a pipeline file or a file it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": error: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found, in the order found.
#[derive(Debug, Clone, Default, PartialEq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics about one pipeline file, locating YAML keys by their path.
pub(crate) struct Reporter<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub found: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Reporter {
            file,
            text,
            found: Vec::new(),
        }
    }

    /// A problem at the YAML entry `path` (for example `["stages", "features_1m", "sql"]`).
    pub fn at(&mut self, path: &[&str], message: impl Into<String>, hint: Option<&str>) {
        self.found.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: yaml_line(self.text, path),
            column: None,
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }

    /// A problem in another file the pipeline names (a schema or a SQL file).
    pub fn in_file(
        &mut self,
        file: &Path,
        line: Option<usize>,
        column: Option<usize>,
        message: impl Into<String>,
        hint: Option<&str>,
    ) {
        self.found.push(Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }
}

/// The 1-based line of a key path in block-style YAML; the deepest key found if the full path
/// is not there. A key counts only at its mapping's own level: `kafka` under a source is not
/// the top-level `kafka`.
pub fn yaml_line(text: &str, path: &[&str]) -> Option<usize> {
    let mut best = None;
    let mut depth = 0;
    let mut parent_indent: Option<usize> = None;
    // The indentation of the mapping searched, set by its first line.
    let mut level: Option<usize> = None;
    for (n, line) in yaml_lines(text).enumerate() {
        if depth == path.len() {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if let Some(p) = parent_indent
            && indent <= p
        {
            // Left the parent's block without finding the next key.
            break;
        }
        let at_level = indent == *level.get_or_insert(indent);
        let key = trimmed
            .trim_start_matches("- ")
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        if at_level && key == path[depth] && trimmed.contains(':') {
            best = Some(n + 1);
            parent_indent = Some(indent);
            level = None;
            depth += 1;
        }
    }
    best
}

/// The lines of `text` as YAML counts them, each ended by `\r\n`, `\r` or `\n`, so that a
/// key's line agrees with the parser's own errors in a file of old Mac line ends.
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        let ending = if rest[end..].starts_with("\r\n") {
            2
        } else {
            usize::from(end < rest.len())
        };
        rest = &rest[end + ending..];
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_on_the_line_yaml_counts_whatever_ends_lines() {
        for end in ["\n", "\r\n", "\r"] {
            let text = [
                "name: p",
                "sources:",
                "  metrics:",
                "",
                "    schema: a.json",
                "",
            ]
            .join(end);
            assert_eq!(
                yaml_line(&text, &["sources", "metrics", "schema"]),
                Some(5),
                "{end:?}"
            );
            let parsed: Result<serde_json::Value, _> =
                serde_norway::from_str(&format!("{text}  bad: [\n"));
            let line = parsed.unwrap_err().location().map(|l| l.line());
            assert!(line >= Some(6), "{end:?}: the parser counts {line:?}");
        }
    }

    #[test]
    fn finds_nested_keys_and_falls_back_to_the_parent() {
        let text = "name: p\nsources:\n  metrics:\n    schema: a.json\n  other:\n    schema: b.json\nstages:\n  s1:\n    sql: x.sql\n";
        assert_eq!(yaml_line(text, &["sources", "other", "schema"]), Some(6));
        assert_eq!(yaml_line(text, &["stages", "s1", "sql"]), Some(9));
        assert_eq!(yaml_line(text, &["stages", "s1", "missing"]), Some(8));
        assert_eq!(yaml_line(text, &["sinks"]), None);
        // A key of the same name deeper down is not the one sought.
        let text = "sources:\n  m:\n    kafka: {topic: t}\nkafka:\n  properties:\n    a: b\n";
        assert_eq!(yaml_line(text, &["kafka", "properties", "a"]), Some(6));
        assert_eq!(yaml_line(text, &["sources", "m", "kafka"]), Some(3));
    }

    #[test]
    fn renders_file_line_and_hint() {
        let d = Diagnostic {
            file: "p.yaml".into(),
            line: Some(4),
            column: None,
            message: "unknown source `x`".into(),
            hint: Some("sources are: metrics".into()),
        };
        assert_eq!(
            d.to_string(),
            "p.yaml:4: error: unknown source `x`\n  hint: sources are: metrics"
        );
    }
}
