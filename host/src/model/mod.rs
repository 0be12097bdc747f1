//! The domain model: what an event is, what plugins say about it, and how
//! those statements become profiles. Pure data and functions: no I/O.
//!
//! - [`event`]: the event as PulseHub sees it, decoded from the wire format
//!   (contract §3).
//! - [`identity`]: identifiers, the profile each resolves to, and how the
//!   profiles of one person merge.
//! - [`update`]: attribute values and the operations plugins apply to them.
//! - [`merge`]: the commutative updates of a batch folded into one change per
//!   user and attribute, with provenance.
//! - [`profile`]: a user's profile with per-attribute provenance, and how
//!   merged changes apply to it.

pub mod event;
pub mod identity;
pub mod merge;
pub mod profile;
pub mod update;
