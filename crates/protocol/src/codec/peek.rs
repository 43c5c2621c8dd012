//! Classifying a frame that does not decode: reads only its `type` and `id` entries,
//! whatever else the map holds, so that the error names the right code and echoes the
//! request's id.

use crate::client::ReqId;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Just enough of a frame to classify a decode failure and answer with its id: the
/// `type` and `id` entries of a map, whatever else the map holds and whatever their
/// values are (so that `{"type": 5, "id": 4}` still yields the id 4).
#[derive(Default)]
pub(super) struct Peek {
    pub(super) ty: PeekType,
    pub(super) id: PeekId,
}

/// The `type` entry of a frame.
#[derive(Default)]
pub(super) enum PeekType {
    #[default]
    Missing,
    Str(String),
    NotString,
}

/// The `id` entry of a frame.
#[derive(Default)]
pub(super) enum PeekId {
    /// Absent or null.
    #[default]
    Missing,
    Usable(ReqId),
    /// Present but not a usable id (too long, empty, a float, a map...).
    Unusable,
}

/// Any map key: only string keys can name `type` or `id`.
#[derive(Deserialize)]
#[serde(untagged)]
enum PeekKey {
    Str(String),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PeekTypeValue {
    Str(String),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PeekIdValue {
    Usable(ReqId),
    Null(()),
    Other(IgnoredAny),
}

impl<'de> Deserialize<'de> for Peek {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PeekVisitor)
    }
}

struct PeekVisitor;

impl<'de> Visitor<'de> for PeekVisitor {
    type Value = Peek;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Peek, A::Error> {
        let mut peek = Peek::default();
        while let Some(key) = map.next_key::<PeekKey>()? {
            match key {
                PeekKey::Str(k) if k == "type" => {
                    peek.ty = match map.next_value::<PeekTypeValue>()? {
                        PeekTypeValue::Str(t) => PeekType::Str(t),
                        PeekTypeValue::Other(_) => PeekType::NotString,
                    }
                }
                PeekKey::Str(k) if k == "id" => {
                    peek.id = match map.next_value::<PeekIdValue>()? {
                        PeekIdValue::Usable(id) => PeekId::Usable(id),
                        PeekIdValue::Null(()) => PeekId::Missing,
                        PeekIdValue::Other(_) => PeekId::Unusable,
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(peek)
    }
}
