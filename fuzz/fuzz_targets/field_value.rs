//! The field and value parsers: `FieldPath::parse` and `FieldValue::parse`, which carry every
//! validated value type of the catalog (email, E.164 phone, names and postal addresses in NFC,
//! birth date, locale, jurisdiction, verification level, preferences, external ids).
//!
//! Input: a field path, a newline, then the value, tried both as a JSON document (objects
//! reach the postal address parser) and as a plain JSON string (the text parsers get the raw
//! bytes, unescaped). Properties: nothing panics; a path prints as itself; a value fits its
//! field, parses again from its own JSON form to itself (normalisation is idempotent), and
//! reads back from its stored (tagged serde) form as itself.
#![no_main]

use idledger_domain::field::{FieldPath, FieldValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, raw) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(field) = FieldPath::parse(path) else {
        return;
    };
    assert_eq!(field.to_string(), path, "a field path prints as another");
    assert_eq!(FieldPath::parse(&field.to_string()).as_ref(), Ok(&field));
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(raw) {
        check(&field, &json);
    }
    check(&field, &serde_json::Value::String(raw.to_owned()));
});

fn check(field: &FieldPath, json: &serde_json::Value) {
    let Ok(value) = FieldValue::parse(field, json) else {
        return;
    };
    assert!(value.fits(field), "{value:?} does not fit {field}");
    let again = value.to_json();
    assert_eq!(
        FieldValue::parse(field, &again).as_ref(),
        Ok(&value),
        "{field}: {json} parsed to {again}, which does not parse to itself"
    );
    let stored = serde_json::to_string(&value).unwrap_or_else(|e| panic!("serialise: {e}"));
    let back: FieldValue =
        serde_json::from_str(&stored).unwrap_or_else(|e| panic!("read back {stored}: {e}"));
    assert_eq!(
        back, value,
        "{field}: the stored form reads back as another value"
    );
}
