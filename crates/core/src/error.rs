use std::fmt;

/// Every error hearth reports. Messages are meant for the user: they say what was wrong
/// and, where possible, with which file or value.
#[derive(Debug)]
pub enum Error {
    /// An I/O error, with the path or action it concerns.
    Io(String, std::io::Error),
    /// A malformed, truncated or inconsistent model file.
    Format(String),
    /// A well-formed file that uses something hearth does not support (yet).
    Unsupported(String),
    /// Bad arguments or input from the user.
    Invalid(String),
    /// A compute device failed: a submission, a lost device, device memory.
    Backend(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Format(m) => write!(f, "invalid model file: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Invalid(m) => write!(f, "{m}"),
            Error::Backend(m) => write!(f, "device error: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// hearth's result type.
pub type Result<T> = std::result::Result<T, Error>;
