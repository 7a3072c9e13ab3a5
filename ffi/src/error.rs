//! Status codes, the thread-local last error, and the guard that keeps panics and errors from
//! crossing the boundary.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use fs::scheduler::SchedulerError;
use fs::EngineError;

/// What a call did. `FLASHSTREAM_OK` is 0; every other value is an error whose message
/// `flashstream_last_error()` returns on the same thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum flashstream_status {
    /// Success.
    FLASHSTREAM_OK = 0,
    /// A required pointer argument was NULL.
    FLASHSTREAM_ERR_NULL = 1,
    /// The handle is not a live handle of its kind (freed, or never returned by this library).
    FLASHSTREAM_ERR_BAD_HANDLE = 2,
    /// A string argument is not valid UTF-8.
    FLASHSTREAM_ERR_UTF8 = 3,
    /// A value is out of range or options cannot work together.
    FLASHSTREAM_ERR_INVALID = 4,
    /// The budget is below the minimum the model needs (the message states the minimum).
    FLASHSTREAM_ERR_BUDGET_TOO_SMALL = 5,
    /// The file is not a usable model (missing, not GGUF, unsupported).
    FLASHSTREAM_ERR_MODEL = 6,
    /// Reading weights failed (I/O error, the file changed or was truncated).
    FLASHSTREAM_ERR_IO = 7,
    /// Cancelled by a callback or `flashstream_session_cancel`.
    FLASHSTREAM_ERR_CANCELLED = 8,
    /// A caller buffer is too small (the size needed is returned where the call says).
    FLASHSTREAM_ERR_BUFFER_TOO_SMALL = 9,
    /// The runtime failed (prompt too long for the context, sampling, ...).
    FLASHSTREAM_ERR_RUNTIME = 10,
    /// A bug inside the library was caught at the boundary (please report it).
    FLASHSTREAM_ERR_INTERNAL = 11,
}

pub use flashstream_status::*;

/// An error on its way to the caller.
#[derive(Debug)]
pub struct Error {
    pub status: flashstream_status,
    pub message: String,
}

impl Error {
    pub fn new(status: flashstream_status, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }

    pub fn null(what: &str) -> Error {
        Error::new(FLASHSTREAM_ERR_NULL, format!("{what} is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(FLASHSTREAM_ERR_INVALID, message)
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Error {
        let status = match &e {
            EngineError::Scheduler(SchedulerError::BudgetTooSmall { .. }) => {
                FLASHSTREAM_ERR_BUDGET_TOO_SMALL
            }
            EngineError::Scheduler(SchedulerError::Cancelled) => FLASHSTREAM_ERR_CANCELLED,
            EngineError::Scheduler(SchedulerError::ReadFailed(_) | SchedulerError::Load(_)) => {
                FLASHSTREAM_ERR_IO
            }
            EngineError::Format(_) | EngineError::Loader(_) | EngineError::Tokenizer(_) => {
                FLASHSTREAM_ERR_MODEL
            }
            EngineError::Scheduler(SchedulerError::BadModel(_)) => FLASHSTREAM_ERR_MODEL,
            EngineError::Invalid(_) => FLASHSTREAM_ERR_INVALID,
            _ => FLASHSTREAM_ERR_RUNTIME,
        };
        Error::new(status, e.to_string())
    }
}

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = c);
}

/// The message of the last error on this thread ("" after a success).
pub fn last_error_ptr() -> *const c_char {
    LAST.with(|l| l.borrow().as_ptr())
}

/// Runs `f`, turning its error (or a panic) into a status and the thread's last error.
pub fn guard(f: impl FnOnce() -> Result<(), Error>) -> flashstream_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last("");
            FLASHSTREAM_OK
        }
        Ok(Err(e)) => {
            set_last(&e.message);
            e.status
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last(&format!("internal error (a bug; please report it): {what}"));
            FLASHSTREAM_ERR_INTERNAL
        }
    }
}
