//! Event schemas: a JSON Schema subset (`schemas/*.json`) compiled into field rules and an
//! Arrow schema.
//!
//! In: the text of a schema file. Out: an [`EventSchema`] — one [`FieldRule`] per declared
//! property, in file order, and the Arrow schema the decoder builds batches of.
//!
//! Supported keywords, per property: `type` (`string`, `number`, `integer`, `boolean`,
//! `object`, or a pair with `"null"`), `format: "date-time"` (an event-time column,
//! Arrow `Timestamp(µs, UTC)`), `enum`, `minimum`, `maximum`, `minLength`, `maxLength`,
//! `description`, and for `object` an `additionalProperties: {"type": "string"}` (a string
//! map, Arrow `Map<Utf8, Utf8>`). At the top: `title`, `type: "object"`, `properties`,
//! `required`, `additionalProperties` (a boolean; unknown fields are ignored when true).
//! Any other keyword is an error: a schema that silently ignores a rule is worse than none.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

/// A schema file that cannot be used, with the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{file}: cannot read the schema: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: property `{property}`: {message}")]
    Property {
        file: String,
        property: String,
        message: String,
    },
    #[error("{file}: {message}")]
    Document { file: String, message: String },
}

/// What a field holds, and so which Arrow type its column has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// UTF-8 text.
    String,
    /// An instant: an RFC 3339 string or integer epoch milliseconds; stored as µs since epoch, UTC.
    Timestamp,
    /// A 64-bit float (JSON `number`; integers are accepted).
    Number,
    /// A 64-bit signed integer.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// An object whose values are all strings.
    StringMap,
}

impl FieldKind {
    /// The JSON type a user writes for this kind, for error messages.
    pub fn json_name(self) -> &'static str {
        match self {
            FieldKind::String => "a string",
            FieldKind::Timestamp => "an RFC 3339 timestamp string or epoch milliseconds",
            FieldKind::Number => "a number",
            FieldKind::Integer => "an integer",
            FieldKind::Boolean => "a boolean",
            FieldKind::StringMap => "an object of strings",
        }
    }

    fn arrow_type(self) -> DataType {
        match self {
            FieldKind::String => DataType::Utf8,
            FieldKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            FieldKind::Number => DataType::Float64,
            FieldKind::Integer => DataType::Int64,
            FieldKind::Boolean => DataType::Boolean,
            FieldKind::StringMap => string_map_type(),
        }
    }
}

/// The names Delta Lake gives a map's entries (`key_value`, `key`, `value`): rows built with
/// them append to a table whose schema grows without a cast (delta-rs merges maps named
/// otherwise into a struct of four fields and fails).
pub(crate) fn map_field_names() -> arrow::array::MapFieldNames {
    arrow::array::MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    }
}

/// The Arrow type of a string map column, as the decoder builds it.
pub(crate) fn string_map_type() -> DataType {
    let names = map_field_names();
    let entries = Fields::from(vec![
        Field::new(names.key, DataType::Utf8, false),
        Field::new(names.value, DataType::Utf8, true),
    ]);
    DataType::Map(
        Arc::new(Field::new(names.entry, DataType::Struct(entries), false)),
        false,
    )
}

/// The checks one field's value must pass.
#[derive(Debug, Clone)]
pub struct FieldRule {
    pub name: String,
    pub kind: FieldKind,
    /// The event is invalid when the field is absent.
    pub required: bool,
    /// `null` is a valid value (the type lists `"null"`).
    pub nullable: bool,
    /// For strings: the allowed values.
    pub allowed: Option<Vec<String>>,
    /// For numbers and integers: inclusive bounds.
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    /// For strings: bounds on the length in characters.
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
}

/// A compiled event schema.
#[derive(Debug, Clone)]
pub struct EventSchema {
    name: String,
    fields: Vec<FieldRule>,
    allow_unknown_fields: bool,
    arrow: SchemaRef,
}

impl EventSchema {
    /// Reads and compiles a schema file.
    pub fn from_file(path: &Path) -> Result<Self, SchemaError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_json(&file, &text)
    }

    /// Compiles a schema from its text; `file` names it in errors.
    pub fn from_json(file: &str, text: &str) -> Result<Self, SchemaError> {
        let doc: SchemaDoc = serde_json::from_str(text).map_err(|e| SchemaError::Syntax {
            file: file.to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        doc.compile(file)
    }

    /// The schema's `title`, used as the source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fields(&self) -> &[FieldRule] {
        &self.fields
    }

    pub fn allow_unknown_fields(&self) -> bool {
        self.allow_unknown_fields
    }

    /// The Arrow schema of decoded batches: one column per property, in file order.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// The position of a field by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaDoc {
    #[serde(rename = "$schema")]
    _schema: Option<String>,
    #[serde(rename = "$id")]
    _id: Option<String>,
    title: String,
    #[serde(rename = "description", default)]
    _description: Option<String>,
    #[serde(rename = "type")]
    ty: String,
    properties: Properties,
    #[serde(default)]
    required: Vec<String>,
    #[serde(rename = "additionalProperties", default = "yes")]
    additional_properties: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PropertyDoc {
    #[serde(rename = "type")]
    ty: TypeDoc,
    format: Option<String>,
    #[serde(rename = "enum")]
    allowed: Option<Vec<String>>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    #[serde(rename = "minLength")]
    min_length: Option<usize>,
    #[serde(rename = "maxLength")]
    max_length: Option<usize>,
    #[serde(rename = "additionalProperties")]
    additional_properties: Option<Box<PropertyDoc>>,
    #[serde(rename = "description", default)]
    _description: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TypeDoc {
    One(String),
    Many(Vec<String>),
}

/// `properties` in document order (a JSON object, kept as a list so columns keep file order).
struct Properties(Vec<(String, PropertyDoc)>);

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Properties;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of property schemas")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Properties, A::Error> {
                let mut out: Vec<(String, PropertyDoc)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, PropertyDoc>()? {
                    if out.iter().any(|(name, _)| *name == k) {
                        return Err(serde::de::Error::custom(format!(
                            "property `{k}` is declared twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Properties(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl SchemaDoc {
    fn compile(self, file: &str) -> Result<EventSchema, SchemaError> {
        let doc_err = |message: String| SchemaError::Document {
            file: file.to_string(),
            message,
        };
        if self.ty != "object" {
            return Err(doc_err(format!(
                "the top-level `type` must be \"object\", not {:?}: each event is a JSON object",
                self.ty
            )));
        }
        if self.properties.0.is_empty() {
            return Err(doc_err(
                "`properties` is empty: declare at least one field".into(),
            ));
        }
        for name in &self.required {
            if !self.properties.0.iter().any(|(p, _)| p == name) {
                return Err(doc_err(format!(
                    "`required` names `{name}`, which is not in `properties`"
                )));
            }
        }
        let mut fields = Vec::with_capacity(self.properties.0.len());
        for (name, prop) in self.properties.0 {
            let required = self.required.contains(&name);
            fields.push(prop.compile(file, name, required)?);
        }
        let arrow = Arc::new(Schema::new(
            fields
                .iter()
                .map(|f| Field::new(&f.name, f.kind.arrow_type(), !f.required || f.nullable))
                .collect::<Vec<_>>(),
        ));
        Ok(EventSchema {
            name: self.title,
            fields,
            allow_unknown_fields: self.additional_properties,
            arrow,
        })
    }
}

impl PropertyDoc {
    fn compile(self, file: &str, name: String, required: bool) -> Result<FieldRule, SchemaError> {
        let err = |message: String| SchemaError::Property {
            file: file.to_string(),
            property: name.clone(),
            message,
        };
        let (ty, nullable) = match &self.ty {
            TypeDoc::One(t) => (t.as_str(), false),
            TypeDoc::Many(ts) => match ts.as_slice() {
                [t, n] | [n, t] if n == "null" && t != "null" => (t.as_str(), true),
                _ => {
                    return Err(err(format!(
                        "type {ts:?} is not supported: use one type, or one type and \"null\""
                    )));
                }
            },
        };
        let kind = match (ty, self.format.as_deref()) {
            ("string", Some("date-time")) => FieldKind::Timestamp,
            ("string", None) => FieldKind::String,
            ("string", Some(other)) => {
                return Err(err(format!(
                    "format {other:?} is not supported; the only format is \"date-time\""
                )));
            }
            ("number", None) => FieldKind::Number,
            ("integer", None) => FieldKind::Integer,
            ("boolean", None) => FieldKind::Boolean,
            ("object", None) => match self.additional_properties.as_deref() {
                Some(PropertyDoc {
                    ty: TypeDoc::One(t),
                    ..
                }) if t == "string" => FieldKind::StringMap,
                _ => {
                    return Err(err(
                        "an object property needs `additionalProperties: {\"type\": \"string\"}` \
                         (only string maps are supported)"
                            .into(),
                    ));
                }
            },
            (t, Some(_)) if t != "string" => {
                return Err(err(format!(
                    "`format` applies to strings only, not to {t:?}"
                )));
            }
            (other, _) => {
                return Err(err(format!(
                    "type {other:?} is not supported; use string, number, integer, boolean or object"
                )));
            }
        };
        let numeric = matches!(kind, FieldKind::Number | FieldKind::Integer);
        if (self.minimum.is_some() || self.maximum.is_some()) && !numeric {
            return Err(err(
                "`minimum`/`maximum` apply to number and integer fields only".into(),
            ));
        }
        if let (Some(lo), Some(hi)) = (self.minimum, self.maximum)
            && lo > hi
        {
            return Err(err(format!("minimum {lo} is greater than maximum {hi}")));
        }
        let textual = kind == FieldKind::String;
        if (self.allowed.is_some() || self.min_length.is_some() || self.max_length.is_some())
            && !textual
        {
            return Err(err(
                "`enum`, `minLength` and `maxLength` apply to plain string fields only".into(),
            ));
        }
        if matches!(&self.allowed, Some(v) if v.is_empty()) {
            return Err(err("`enum` is empty: no value could pass".into()));
        }
        if kind != FieldKind::StringMap && self.additional_properties.is_some() {
            return Err(err(
                "`additionalProperties` applies to object fields only".into()
            ));
        }
        Ok(FieldRule {
            name,
            kind,
            required,
            nullable,
            allowed: self.allowed,
            minimum: self.minimum,
            maximum: self.maximum,
            min_length: self.min_length,
            max_length: self.max_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{
        "title": "t", "type": "object",
        "properties": {
            "ts": {"type": "string", "format": "date-time"},
            "name": {"type": "string", "enum": ["a", "b"]},
            "v": {"type": ["number", "null"], "minimum": 0},
            "n": {"type": "integer"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}}
        },
        "required": ["ts", "name"]
    }"#;

    #[test]
    fn compiles_fields_in_file_order_with_arrow_types() {
        let s = EventSchema::from_json("t.json", OK).unwrap();
        let names: Vec<_> = s.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["ts", "name", "v", "n", "tags"]);
        let a = s.arrow_schema();
        assert_eq!(
            a.field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert!(!a.field(0).is_nullable());
        assert!(a.field(2).is_nullable());
        assert_eq!(a.field(4).data_type(), &string_map_type());
        assert!(s.fields()[2].nullable);
        assert_eq!(s.index_of("n"), Some(3));
    }

    #[test]
    fn unknown_keyword_is_reported_with_line() {
        let text = "{\n \"title\": \"t\", \"type\": \"object\",\n \"propertes\": {}\n}";
        let e = EventSchema::from_json("s.json", text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.json:3:"), "{e}");
        assert!(e.contains("propertes"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_property() {
        let text =
            r#"{"title":"t","type":"object","properties":{"x":{"type":"string","minimum":1}}}"#;
        let e = EventSchema::from_json("s.json", text)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "s.json: property `x`: `minimum`/`maximum` apply to number and integer fields only"
        );
        let text = r#"{"title":"t","type":"object","properties":{"x":{"type":"string"}},"required":["y"]}"#;
        let e = EventSchema::from_json("s.json", text)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "s.json: `required` names `y`, which is not in `properties`"
        );
    }

    /// Window state checkpointed before the decoder named map entries as Delta does is cast
    /// on restore: the cast must exist.
    #[test]
    fn a_map_named_as_arrow_names_it_casts_to_the_decoders() {
        use arrow::array::{Array, MapBuilder, StringBuilder};
        let mut old = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        old.keys().append_value("InstanceId");
        old.values().append_value("i-1");
        old.append(true).unwrap();
        let old = old.finish();
        assert_ne!(old.data_type(), &string_map_type());
        let cast = arrow::compute::cast(&old, &string_map_type()).unwrap();
        assert_eq!(cast.data_type(), &string_map_type());
        assert_eq!(cast.len(), 1);
    }
}
