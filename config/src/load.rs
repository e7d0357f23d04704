//! Loading YAML with errors that name the file, line and field.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration error: where it is and what is allowed instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or other source) the text came from.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// Dotted path of the field, e.g. `datasets[0].chunk_size`; empty for the document.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    /// An error in `file` that no line can be pointed at: one that spans
    /// entries, or the whole document (`field` empty).
    pub fn in_file(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: None,
            column: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": field `{}`: {}", self.field, self.message)
        }
    }
}

/// Parses `text` (from `file`, named in errors) as YAML into `T`.
pub fn from_yaml<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    let mut field = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            field = path_text(err.path());
            err.into_inner()
        })
    });
    parsed.map_err(|err| {
        let location = err.location();
        ConfigError {
            file: file.to_owned(),
            line: location.map(|l| l.line()).filter(|&l| l > 0),
            column: location.map(|l| l.column()).filter(|&c| c > 0),
            field,
            message: message_of(&err),
        }
    })
}

/// `value` as YAML that [`from_yaml`] reads back.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| e.to_string())
}

/// Reads and parses the YAML file at `path` into `T`.
pub fn from_yaml_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError::in_file(&file, "", format!("cannot read the file: {err}")))?;
    from_yaml(&text, &file)
}

/// The field path as users write it: `datasets[0].chunk_size`. Lists of data
/// sets are read through `Spanned` (to report duplicate lines), which adds a
/// `value` step right after the index; it is not part of the user's document.
fn path_text(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut text = String::new();
    let mut after_index = false;
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } if after_index && key == "value" => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Unknown => {}
        }
        after_index = matches!(segment, Segment::Seq { .. });
    }
    text
}

/// The error's message without the snippet and location the YAML library renders,
/// since [`ConfigError`] reports the location itself.
fn message_of(err: &serde_saphyr::Error) -> String {
    let rendered = err.without_snippet().to_string();
    let first = rendered.lines().next().unwrap_or_default().trim();
    strip_location_suffix(first).to_owned()
}

fn strip_location_suffix(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    }
}
