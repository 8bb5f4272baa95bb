//! An event's `data` as the API shows it, written straight into the response: the payload's
//! fields without its `type` tag (the view has its own), and the field value it carries in
//! its natural form ([`FieldValue::natural`]) instead of the stored, tagged one.
//!
//! A history or an export holds hundreds of events: building a `serde_json::Value` of each
//! payload to edit it cost more than decrypting the event. This serializer edits the payload
//! as serde writes it instead. Every payload variant is a struct or a unit variant, which an
//! internally tagged enum writes as a struct beginning with its tag; anything else is an error.

use idledger_domain::event::EventPayload;
use idledger_domain::field::FieldValue;
use serde::ser::{self, Error as _, Impossible, Serialize, SerializeMap, Serializer};

/// What a payload that is not written as a struct is told.
const NOT_A_STRUCT: &str = "an event payload serialises as a struct";

/// The `data` of an [`super::EventView`].
#[derive(Debug)]
pub struct EventData(pub EventPayload);

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(DataSerializer {
            value: self.0.value(),
            inner: serializer,
        })
    }
}

struct DataSerializer<'a, S> {
    /// The payload's field value, written in its natural form.
    value: Option<&'a FieldValue>,
    inner: S,
}

struct DataFields<'a, M> {
    value: Option<&'a FieldValue>,
    value_written: bool,
    map: M,
}

impl<M: SerializeMap> ser::SerializeStruct for DataFields<'_, M> {
    type Ok = M::Ok;
    type Error = M::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        field: &T,
    ) -> Result<(), M::Error> {
        match (key, self.value) {
            ("type", _) => Ok(()),
            ("value", Some(value)) => {
                self.value_written = true;
                self.map.serialize_entry(key, &value.natural())
            }
            _ => self.map.serialize_entry(key, field),
        }
    }

    fn end(mut self) -> Result<M::Ok, M::Error> {
        // A value nested deeper (an adopted field's) is shown at the top as well.
        if let (Some(value), false) = (self.value, self.value_written) {
            self.map.serialize_entry("value", &value.natural())?;
        }
        self.map.end()
    }
}

macro_rules! not_a_struct {
    ($($method:ident($($arg:ty),*) -> $out:ty;)*) => {
        $(
            fn $method(self, $(_: $arg),*) -> Result<$out, S::Error> {
                Err(S::Error::custom(NOT_A_STRUCT))
            }
        )*
    };
}

impl<'a, S: Serializer> Serializer for DataSerializer<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = Impossible<S::Ok, S::Error>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = DataFields<'a, S::SerializeMap>;
    type SerializeStructVariant = Impossible<S::Ok, S::Error>;

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Ok(DataFields {
            value: self.value,
            value_written: false,
            map: self.inner.serialize_map(None)?,
        })
    }

    not_a_struct! {
        serialize_bool(bool) -> S::Ok;
        serialize_i8(i8) -> S::Ok;
        serialize_i16(i16) -> S::Ok;
        serialize_i32(i32) -> S::Ok;
        serialize_i64(i64) -> S::Ok;
        serialize_u8(u8) -> S::Ok;
        serialize_u16(u16) -> S::Ok;
        serialize_u32(u32) -> S::Ok;
        serialize_u64(u64) -> S::Ok;
        serialize_f32(f32) -> S::Ok;
        serialize_f64(f64) -> S::Ok;
        serialize_char(char) -> S::Ok;
        serialize_str(&str) -> S::Ok;
        serialize_bytes(&[u8]) -> S::Ok;
        serialize_none() -> S::Ok;
        serialize_unit() -> S::Ok;
        serialize_unit_struct(&'static str) -> S::Ok;
        serialize_unit_variant(&'static str, u32, &'static str) -> S::Ok;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(S::Error::custom(NOT_A_STRUCT))
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(S::Error::custom(NOT_A_STRUCT))
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(S::Error::custom(NOT_A_STRUCT))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;

    use idledger_domain::event::EventEnvelope;
    use idledger_domain::schema::EVENT_TYPES;
    use serde_json::Value;

    use super::*;

    /// Streams through every event type, recorded by `decide` (the domain's fold fixture).
    const STREAMS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../domain/tests/fixtures/fold_streams.json"
    ));

    /// The rule, stated on a JSON tree: the payload's object without `type`, and `value` in
    /// its natural form (added when the value sits deeper).
    fn shown(payload: &EventPayload) -> Value {
        let mut data = serde_json::to_value(payload).unwrap();
        let map = data.as_object_mut().unwrap();
        map.remove("type");
        if let Some(value) = payload.value() {
            map.insert("value".to_owned(), value.to_json());
        }
        data
    }

    #[test]
    fn every_event_type_shows_its_data_as_the_rule_says() {
        let all: serde_json::Map<String, Value> = serde_json::from_str(STREAMS).unwrap();
        let mut seen = BTreeSet::new();
        for events in all.into_values() {
            let events: Vec<EventEnvelope> = serde_json::from_value(events).unwrap();
            for envelope in events {
                let payload = envelope.event.payload;
                seen.insert(payload.type_name());
                let written = serde_json::to_value(EventData(payload.clone())).unwrap();
                assert_eq!(written, shown(&payload), "{}", payload.type_name());
                assert!(written.get("type").is_none());
            }
        }
        assert_eq!(seen, EVENT_TYPES.into_iter().collect::<BTreeSet<_>>());
    }

    #[test]
    fn a_value_is_shown_in_its_natural_form() {
        let all: serde_json::Map<String, Value> = serde_json::from_str(STREAMS).unwrap();
        let set = all
            .into_values()
            .flat_map(|events| serde_json::from_value::<Vec<EventEnvelope>>(events).unwrap())
            .find(|e| e.event.payload.type_name() == "field_set")
            .expect("a field_set in the fixture");
        let written = serde_json::to_value(EventData(set.event.payload.clone())).unwrap();
        let value = set.event.payload.value().unwrap();
        assert_eq!(written["value"], value.to_json());
        // The stored form is tagged; the shown one is not.
        assert!(serde_json::to_value(value).unwrap().get("kind").is_some());
        assert_ne!(written["value"], serde_json::to_value(value).unwrap());
    }
}
