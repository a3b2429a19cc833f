//! Decode and validate: raw event bytes in, Arrow batches of valid rows out, and a
//! [`DecodeError`] for each invalid event (which the source sends to the dead-letter topic).
//!
//! - [`schema`]: the JSON Schema subset of `schemas/*.json`, compiled to rules and an Arrow schema.
//! - [`decode`]: the schema-driven decoder that appends valid events to column builders.

pub mod decode;
pub mod schema;

pub use decode::{BatchDecoder, DecodeError, TimeBounds};
pub use schema::{EventSchema, FieldKind, FieldRule, SchemaError};
