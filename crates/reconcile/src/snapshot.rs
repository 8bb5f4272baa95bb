//! Reading a consumer's snapshot export: NDJSON or CSV rows of customer id, field, and the
//! value it holds (or that value's hash). Parsing is synchronous and streaming — one row at a
//! time — so an export of any size is read in constant memory; callers run it on a blocking
//! thread and store rows in batches.

use std::io::{BufRead, BufReader, Read};

use idledger_domain::alias::CustomerNames;
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::hashing::{HashKey, ValueHash};
use serde::Deserialize;
use uuid::Uuid;

use idledger_store::runs::SnapshotRow;

/// Longest line (NDJSON) or record (CSV) accepted, so a broken file cannot exhaust memory.
pub const MAX_ROW_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotFormat {
    Ndjson,
    Csv,
}

impl SnapshotFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Csv => "csv",
        }
    }

    /// From a name (`ndjson`, `jsonl`, `csv`), a media type or a file extension.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim().to_ascii_lowercase();
        let essence = raw.split(';').next().unwrap_or_default().trim();
        match essence {
            "ndjson"
            | "jsonl"
            | "application/x-ndjson"
            | "application/jsonl"
            | "application/ndjson" => Some(Self::Ndjson),
            "csv" | "text/csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// One row read: stored, or refused with the reason (reported as an `invalid_row` finding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Row(SnapshotRow),
    Invalid {
        line: u64,
        customer_id: String,
        field: String,
        error: String,
    },
}

/// The file as a whole could not be read (not one bad row: those are [`Parsed::Invalid`]).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the snapshot failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the CSV header must name the columns customer_id, field and value or value_hash; it has: {0}"
    )]
    Header(String),
    #[error("reading the CSV failed: {0}")]
    Csv(#[from] csv::Error),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    customer_id: String,
    field: String,
    #[serde(default, deserialize_with = "present")]
    value: Option<serde_json::Value>,
    #[serde(default)]
    value_hash: Option<String>,
}

/// Keeps `"value": null` (holds no value) apart from a missing `value`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// How the consumer's rows are read: values hashed under its key, the way it acknowledges
/// them, and customers named as it names them (ids, or its aliases).
#[derive(Debug, Clone)]
pub struct RowKeys {
    pub hash: HashKey,
    pub names: CustomerNames,
}

/// Reads every row, handing each to `sink`; stops early when `sink` returns false.
pub fn read(
    input: impl Read,
    format: SnapshotFormat,
    keys: &RowKeys,
    mut sink: impl FnMut(Parsed) -> bool,
) -> Result<(), SnapshotError> {
    match format {
        SnapshotFormat::Ndjson => read_ndjson(input, keys, &mut sink),
        SnapshotFormat::Csv => read_csv(input, keys, &mut sink),
    }
}

fn read_ndjson(
    input: impl Read,
    keys: &RowKeys,
    sink: &mut impl FnMut(Parsed) -> bool,
) -> Result<(), SnapshotError> {
    let mut reader = BufReader::new(input);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_ROW_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        if buf.len() > MAX_ROW_BYTES && !buf.ends_with(b"\n") {
            // Skip the rest of the oversized line.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest)?;
            let go_on = sink(invalid(
                line,
                "",
                "",
                format!("longer than {MAX_ROW_BYTES} bytes"),
            ));
            if !go_on {
                return Ok(());
            }
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let parsed = match serde_json::from_str::<JsonRow>(text) {
            Ok(row) => row_of(
                keys,
                line,
                &row.customer_id,
                &row.field,
                row.value.as_ref(),
                row.value_hash.as_deref(),
            ),
            Err(e) => invalid(line, "", "", format!("not a snapshot row: {e}")),
        };
        if !sink(parsed) {
            return Ok(());
        }
    }
}

fn read_csv(
    input: impl Read,
    keys: &RowKeys,
    sink: &mut impl FnMut(Parsed) -> bool,
) -> Result<(), SnapshotError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(customer_col), Some(field_col)) = (col("customer_id"), col("field")) else {
        return Err(SnapshotError::Header(
            headers.iter().collect::<Vec<_>>().join(","),
        ));
    };
    let value_col = col("value");
    let hash_col = col("value_hash");
    if value_col.is_none() && hash_col.is_none() {
        return Err(SnapshotError::Header(
            headers.iter().collect::<Vec<_>>().join(","),
        ));
    }
    let mut record = csv::StringRecord::new();
    loop {
        // Where the next record starts: its line (records may span lines when quoted).
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => {
                if !sink(invalid(line, "", "", format!("not UTF-8: {e}"))) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let get = |i: Option<usize>| i.and_then(|i| record.get(i)).filter(|v| !v.is_empty());
        let customer = get(Some(customer_col)).unwrap_or_default();
        let field = get(Some(field_col)).unwrap_or_default();
        // A cell is JSON when it parses as JSON (numbers, booleans, objects), else a string.
        let value = get(value_col).map(|v| {
            serde_json::from_str::<serde_json::Value>(v)
                .ok()
                .filter(|j| !j.is_string())
                .unwrap_or_else(|| serde_json::Value::String(v.to_owned()))
        });
        // Both cells empty: it holds the field with no value.
        let value = match (&value, get(hash_col)) {
            (None, None) => Some(serde_json::Value::Null),
            _ => value,
        };
        if !sink(row_of(
            keys,
            line,
            customer,
            field,
            value.as_ref(),
            get(hash_col),
        )) {
            return Ok(());
        }
    }
}

fn invalid(line: u64, customer: &str, field: &str, error: String) -> Parsed {
    Parsed::Invalid {
        line,
        customer_id: customer.chars().take(64).collect(),
        field: field.chars().take(64).collect(),
        error,
    }
}

/// Checks a row and works out the hash of what it holds, the way consumers acknowledge.
fn row_of(
    keys: &RowKeys,
    line: u64,
    customer: &str,
    field: &str,
    value: Option<&serde_json::Value>,
    value_hash: Option<&str>,
) -> Parsed {
    // Any UUID may name a customer the record does not know (an `extra` finding); an alias
    // must be one of this consumer's.
    let customer_id = match &keys.names {
        CustomerNames::Ids => Uuid::parse_str(customer).map_err(|_| "is not a UUID".to_owned()),
        names => names
            .resolve(customer)
            .map(|c| c.as_uuid())
            .map_err(|_| "is not one of this consumer's customer aliases".to_owned()),
    };
    let customer_id = match customer_id {
        Ok(id) => id,
        Err(e) => return invalid(line, customer, field, format!("customer_id {e}")),
    };
    let path = match FieldPath::parse(field) {
        Ok(path) => path,
        Err(e) => return invalid(line, customer, field, e.to_string()),
    };
    let hash = match (value, value_hash) {
        (Some(_), Some(_)) => {
            return invalid(
                line,
                customer,
                field,
                "give value or value_hash, not both".to_owned(),
            );
        }
        (None, None) => {
            return invalid(line, customer, field, "give value or value_hash".to_owned());
        }
        (None, Some(hash)) => match ValueHash::parse(hash) {
            Ok(hash) => Some(String::from(hash)),
            Err(e) => return invalid(line, customer, field, e.to_string()),
        },
        (Some(serde_json::Value::Null), None) => None,
        (Some(value), None) => match hash_of(&keys.hash, &path, value) {
            Ok(hash) => Some(hash),
            Err(e) => return invalid(line, customer, field, e),
        },
    };
    Parsed::Row(SnapshotRow {
        customer_id,
        field: path.to_string(),
        value_hash: hash,
        line,
    })
}

fn hash_of(key: &HashKey, field: &FieldPath, value: &serde_json::Value) -> Result<String, String> {
    if let FieldPath::Consent(_) = field {
        return match value.as_str() {
            Some("granted") => Ok(key.consent(true).into()),
            Some("withdrawn") => Ok(key.consent(false).into()),
            _ => Err("a consent's value is \"granted\" or \"withdrawn\"".to_owned()),
        };
    }
    FieldValue::parse(field, value)
        .map(|v| key.value(&v).into())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn key() -> HashKey {
        HashKey::from_hex(&"5a".repeat(32)).unwrap()
    }

    fn keys() -> RowKeys {
        RowKeys {
            hash: key(),
            names: CustomerNames::Ids,
        }
    }

    fn rows(input: &str, format: SnapshotFormat) -> Vec<Parsed> {
        let mut out = Vec::new();
        read(input.as_bytes(), format, &keys(), |p| {
            out.push(p);
            true
        })
        .unwrap();
        out
    }

    const ID: &str = "01936b3e-8f4c-7000-8000-000000000001";

    #[test]
    fn ndjson_rows_hash_values_the_way_consumers_ack() {
        let input = format!(
            "{{\"customer_id\":\"{ID}\",\"field\":\"email\",\"value\":\"Ada@Example.org\"}}\n\n\
             {{\"customer_id\":\"{ID}\",\"field\":\"consent.marketing\",\"value\":\"granted\"}}\n\
             {{\"customer_id\":\"{ID}\",\"field\":\"phone\",\"value\":null}}\n\
             {{\"customer_id\":\"nope\",\"field\":\"email\",\"value\":\"a@example.org\"}}\n\
             {{\"customer_id\":\"{ID}\",\"field\":\"shoe_size\",\"value\":\"44\"}}\n"
        );
        let parsed = rows(&input, SnapshotFormat::Ndjson);
        let email = FieldValue::parse(
            &FieldPath::parse("email").unwrap(),
            &serde_json::json!("ada@example.org"),
        )
        .unwrap();
        let Parsed::Row(first) = &parsed[0] else {
            panic!("{parsed:?}")
        };
        assert_eq!(
            first.value_hash.as_deref(),
            Some(key().value(&email).as_str()),
            "normalised before hashing"
        );
        let Parsed::Row(consent) = &parsed[1] else {
            panic!("{parsed:?}")
        };
        assert_eq!(consent.line, 3);
        assert_eq!(consent.value_hash, Some(key().consent(true).into()));
        let Parsed::Row(phone) = &parsed[2] else {
            panic!("{parsed:?}")
        };
        assert_eq!(phone.value_hash, None);
        assert!(
            matches!(&parsed[3], Parsed::Invalid { line: 5, error, .. } if error.contains("UUID"))
        );
        assert!(matches!(&parsed[4], Parsed::Invalid { line: 6, .. }));
    }

    #[test]
    fn csv_rows_take_values_or_hashes_and_report_lines() {
        let hash = format!("hmac-sha256:{}", "a".repeat(64));
        let unkeyed = format!("sha256:{}", "a".repeat(64));
        let input = format!(
            "customer_id,field,value,value_hash\n{ID},email,ada@example.org,\n{ID},name.given,,{hash}\n{ID},phone,,\n{ID},email,x,{hash}\n{ID},phone,,{unkeyed}\n"
        );
        let parsed = rows(&input, SnapshotFormat::Csv);
        assert_eq!(parsed.len(), 5);
        assert!(matches!(&parsed[0], Parsed::Row(r) if r.line == 2 && r.value_hash.is_some()));
        assert!(
            matches!(&parsed[1], Parsed::Row(r) if r.value_hash.as_deref() == Some(hash.as_str()))
        );
        assert!(matches!(&parsed[2], Parsed::Row(r) if r.value_hash.is_none()));
        assert!(
            matches!(&parsed[3], Parsed::Invalid { line: 5, error, .. } if error.contains("not both"))
        );
        // An unkeyed hash is refused: it would never match, and it exposes the value.
        assert!(
            matches!(&parsed[4], Parsed::Invalid { line: 6, error, .. } if error.contains("hmac-sha256"))
        );
    }

    #[test]
    fn a_csv_without_the_columns_is_refused_as_a_whole() {
        let err = read(
            "id,value\n1,2\n".as_bytes(),
            SnapshotFormat::Csv,
            &keys(),
            |_| true,
        )
        .unwrap_err();
        assert!(matches!(err, SnapshotError::Header(_)), "{err}");
    }
}
