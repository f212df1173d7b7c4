//! Opaque handles shared by the session layer and the I/O backends: neither owns the other's
//! numbering, so both name things by these small `Copy` values (quinn-proto `shared.rs`).
#![forbid(unsafe_code)]

/// A TCP connection, numbered by the driver (an index below `max_connections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

/// A generation-checked index into a shard's session slab (STYLE rule 12): a handle kept after
/// its session ended does not reach the session that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionHandle {
    index: u32,
    generation: u32,
}

impl SessionHandle {
    /// The handle of slot `index` in its `generation`.
    pub(crate) const fn new(index: u32, generation: u32) -> Self {
        Self { index, generation }
    }

    /// The slab index.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The slot's generation when the handle was made.
    pub(crate) fn generation(self) -> u32 {
        self.generation
    }
}
