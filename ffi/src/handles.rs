//! Live handles: the pointers given to C are keys into these tables, never addresses of Rust
//! objects, so a freed or made-up handle is an error code, not undefined behaviour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fs::runtime::chat::ChatTemplate;
use fs::runtime::generate::GenerateStats;
use fs::runtime::model::Session;
use fs::runtime::tokenizer::Tokenizer;
use fs::Engine;

use crate::error::{Error, FLASHSTREAM_ERR_BAD_HANDLE};

/// An engine and what its calls share.
pub struct EngineBox {
    pub engine: Engine,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// The figures of the last generation of any of its sessions.
    pub last: Mutex<Option<GenerateStats>>,
}

/// A session: the runtime session borrows the engine, which this box keeps alive.
pub struct SessionBox {
    // Declared first: dropped before `engine`, whose model it borrows.
    pub session: Mutex<Session<'static>>,
    pub cancel: AtomicBool,
    pub engine: Arc<EngineBox>,
}

impl SessionBox {
    pub fn new(engine: Arc<EngineBox>) -> Result<SessionBox, Error> {
        let s = engine.engine.session()?;
        // SAFETY: the session borrows `engine.engine`, which lives in the Arc this box holds
        // (its address never changes) and is dropped after the session (field order).
        let s: Session<'static> =
            unsafe { std::mem::transmute::<Session<'_>, Session<'static>>(s) };
        Ok(SessionBox {
            session: Mutex::new(s),
            cancel: AtomicBool::new(false),
            engine,
        })
    }
}

/// A table of live handles of one kind.
pub struct Table<T> {
    map: Mutex<Option<HashMap<usize, Arc<T>>>>,
    kind: &'static str,
}

static NEXT: AtomicUsize = AtomicUsize::new(1);

impl<T> Table<T> {
    pub const fn new(kind: &'static str) -> Self {
        Table {
            map: Mutex::new(None),
            kind,
        }
    }

    /// Registers `v`; the handle value (never 0, 16-byte steps so it looks like a pointer).
    pub fn insert(&self, v: T) -> usize {
        let key = NEXT.fetch_add(1, Ordering::Relaxed) << 4;
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get_or_insert_with(HashMap::new).insert(key, Arc::new(v));
        key
    }

    pub fn get(&self, key: usize) -> Result<Arc<T>, Error> {
        if key == 0 {
            return Err(Error::null(&format!("the {} handle", self.kind)));
        }
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.as_ref()
            .and_then(|m| m.get(&key).cloned())
            .ok_or_else(|| self.bad())
    }

    /// Removes the handle; the object goes when its last user (a call in progress, a
    /// session) lets go.
    pub fn remove(&self, key: usize) -> Result<Arc<T>, Error> {
        if key == 0 {
            return Err(Error::null(&format!("the {} handle", self.kind)));
        }
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.as_mut()
            .and_then(|m| m.remove(&key))
            .ok_or_else(|| self.bad())
    }

    fn bad(&self) -> Error {
        Error::new(
            FLASHSTREAM_ERR_BAD_HANDLE,
            format!(
                "not a live {} handle (already freed, or not made by this library)",
                self.kind
            ),
        )
    }
}

pub static ENGINES: Table<EngineBox> = Table::new("engine");
pub static SESSIONS: Table<SessionBox> = Table::new("session");
