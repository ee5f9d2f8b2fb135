use std::fmt;

/// One problem in the configuration file, located by its field path (e.g. `workloads[2].ips[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

/// Every problem found in one file; a file is accepted only when this is empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Errors(pub Vec<FieldError>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s) in configuration:", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {}: {}", e.path, e.reason)?;
        }
        Ok(())
    }
}

impl Errors {
    pub fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}
