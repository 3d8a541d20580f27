//! Helpers the compute app modules share: Nova-style input parsing and
//! time formats.

use serde_json::Value;

use crate::context::Context;
use crate::db::Timestamp;
use crate::error::{Error, Result};

/// The caller's project, or 403 for an unscoped token.
pub fn project_of(ctx: &Context) -> Result<&str> {
    ctx.project_id()
        .ok_or_else(|| Error::forbidden("This operation needs a project-scoped token."))
}

/// Nova's validation message for a bad field.
pub fn invalid(field: &str, value: &Value, why: &str) -> Error {
    Error::bad_request(format!(
        "Invalid input for field/attribute {field}. Value: {}. {why}",
        match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    ))
}

/// An integer given as a JSON number or a string of digits (Nova accepts
/// both for many fields), within `min..=max`.
pub fn int_field(field: &str, v: &Value, min: i64, max: i64) -> Result<i64> {
    let n = match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| invalid(field, v, &format!("{v} is not of type 'integer', 'string'")))?,
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| invalid(field, v, &format!("'{s}' does not match '^-?[0-9]+$'")))?,
        _ => {
            return Err(invalid(
                field,
                v,
                &format!("{v} is not of type 'integer', 'string'"),
            ));
        }
    };
    if n < min {
        return Err(invalid(
            field,
            v,
            &format!("{n} is less than the minimum of {min}"),
        ));
    }
    if n > max {
        return Err(invalid(
            field,
            v,
            &format!("{n} is greater than the maximum of {max}"),
        ));
    }
    Ok(n)
}

/// A string field of `min..=max` characters.
pub fn str_field(field: &str, v: &Value, min: usize, max: usize) -> Result<String> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(field, v, &format!("{v} is not of type 'string'")))?;
    let n = s.chars().count();
    if n < min {
        return Err(invalid(field, v, &format!("'{s}' is too short")));
    }
    if n > max {
        return Err(invalid(field, v, &format!("'{s}' is too long")));
    }
    Ok(s.to_owned())
}

/// A boolean given as JSON or as Nova's strings (`true`, `1`, `yes`, …).
pub fn bool_field(field: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => {
            parse_bool(s).ok_or_else(|| invalid(field, v, &format!("'{s}' is not a boolean")))
        }
        Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
            Ok(n.as_i64() == Some(1))
        }
        _ => Err(invalid(field, v, &format!("{v} is not of type 'boolean'"))),
    }
}

/// oslo's `bool_from_string` (strict).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" | "t" => Some(true),
        "false" | "0" | "no" | "n" | "off" | "f" => Some(false),
        _ => None,
    }
}

/// Nova's display names: 1–255 characters, no leading or trailing
/// whitespace.
pub fn check_name(field: &str, v: &Value) -> Result<String> {
    let s = str_field(field, v, 1, 255)?;
    if s.trim() != s {
        return Err(invalid(
            field,
            v,
            "Leading/trailing whitespace is not allowed",
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(invalid(field, v, "Control characters are not allowed"));
    }
    Ok(s)
}

/// `2013-09-03T04:01:32Z` (Nova's `isotime`).
pub fn isotime(t: &Timestamp) -> String {
    t.seconds()
}

/// `2013-09-23T13:37:00.880302` (naive datetimes as oslo serializes them).
pub fn naive_time(t: &Timestamp) -> String {
    t.0.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// Parses a time filter (`changes-since`, …): ISO 8601, with or without
/// a zone (UTC assumed).
pub fn parse_time(field: &str, s: &str) -> Result<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(Timestamp(t.and_utc()));
        }
        if let Ok(d) = chrono::NaiveDate::parse_from_str(s, fmt) {
            return Ok(Timestamp(
                d.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
            ));
        }
    }
    Err(Error::bad_request(format!(
        "Invalid input for query parameters {field}. Value: {s}. '{s}' is not a 'date-time'"
    )))
}

/// The id at the end of a reference that may be a URL (`imageRef`,
/// `flavorRef`).
pub fn id_from_href(href: &str) -> String {
    href.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(href)
        .to_owned()
}

/// Whether `s` looks like a UUID (with or without dashes).
pub fn is_uuid_like(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nova_inputs() {
        assert_eq!(int_field("ram", &json!("512"), 1, 100000).unwrap(), 512);
        assert_eq!(int_field("ram", &json!(512), 1, 100000).unwrap(), 512);
        assert!(int_field("ram", &json!(0), 1, 100000).is_err());
        assert!(int_field("ram", &json!("lots"), 1, 100000).is_err());
        assert!(int_field("ram", &json!(1.5), 1, 100000).is_err());
        assert!(bool_field("x", &json!("True")).unwrap());
        assert!(!bool_field("x", &json!(false)).unwrap());
        assert!(bool_field("x", &json!("maybe")).is_err());
        assert!(check_name("name", &json!(" x")).is_err());
        assert!(check_name("name", &json!("")).is_err());
        assert_eq!(check_name("name", &json!("vm 1")).unwrap(), "vm 1");
        assert_eq!(id_from_href("http://h/v2.1/flavors/42"), "42");
        assert_eq!(id_from_href("42"), "42");
        let t = parse_time("changes-since", "2025-01-02T03:04:05Z").unwrap();
        assert_eq!(isotime(&t), "2025-01-02T03:04:05Z");
        assert_eq!(naive_time(&t), "2025-01-02T03:04:05.000000");
        assert!(parse_time("changes-since", "2025-01-02T03:04:05").is_ok());
        assert!(parse_time("changes-since", "yesterday").is_err());
    }
}
