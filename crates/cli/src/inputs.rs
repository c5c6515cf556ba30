//! Reading and checking the inputs named on the command line (other than images, which
//! `preprocess` reads).

use std::collections::HashSet;
use std::path::Path;

use crate::error::{CliError, Result};

/// Reads a labels file: one label per line, surrounding whitespace trimmed, blank lines
/// skipped.
pub fn read_labels_file(path: &Path) -> Result<Vec<String>> {
    let bytes =
        std::fs::read(path).map_err(|e| CliError::input("labels file", path, io_msg(&e)))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| CliError::input("labels file", path, format!("not UTF-8 text: {e}")))?;
    let labels: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if labels.is_empty() {
        return Err(CliError::input(
            "labels file",
            path,
            "has no labels (one per line expected)",
        ));
    }
    Ok(labels)
}

/// Checks a list of labels: none empty, none twice.
pub fn check_labels(labels: &[String]) -> Result<()> {
    let mut seen = HashSet::new();
    for label in labels {
        if label.trim().is_empty() {
            return Err(CliError::Usage("a label is empty".into()));
        }
        if !seen.insert(label.as_str()) {
            return Err(CliError::Usage(format!(
                "the label {label:?} is given twice; every label must be distinct"
            )));
        }
    }
    Ok(())
}

/// Checks that every prompt template has a `{}` for the label.
pub fn check_templates(templates: &[String]) -> Result<()> {
    match templates.iter().find(|t| !t.contains("{}")) {
        Some(t) => Err(CliError::Usage(format!(
            "the template {t:?} has no {{}} where the label goes (e.g. \"a photo of a {{}}.\")"
        ))),
        None => Ok(()),
    }
}

/// Checks that the directory of `out` exists and that `out` is not a directory, so that a
/// long computation does not end in a failed write.
pub fn check_output_path(out: &Path) -> Result<()> {
    if out.is_dir() {
        return Err(CliError::output(
            out,
            "it is a directory; --out takes a file name",
        ));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CliError::output(
            out,
            format!("the directory {} does not exist", parent.display()),
        ));
    }
    Ok(())
}

/// An I/O error as a short phrase ("no such file", "permission denied", ...).
pub fn io_msg(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot be read: {e}"),
    }
}
