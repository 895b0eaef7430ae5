//! YAML text as figment values, for the config file and for rule files.

use std::fmt;

use figment::value::{Dict, Empty, Tag, Value};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parses a YAML document into a figment value. Merge keys
/// (`<<: *anchor`) are resolved, which is handy for sharing one set of
/// limits between several ids.
pub(crate) fn parse(text: &str) -> Result<Value, yaml_serde::Error> {
    let mut document: yaml_serde::Value = yaml_serde::from_str(text)?;
    document.apply_merge()?;
    let YamlNode(value) = YamlNode::deserialize(document)?;
    Ok(value)
}

/// A value's kind, in words, for errors.
pub(crate) fn shape(v: &Value) -> &'static str {
    match v {
        Value::Dict(..) => "a mapping",
        Value::Array(..) => "a list",
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
    }
}

/// Drops keys whose value is null, so `key:` and `key: ~` mean "not set".
pub(crate) fn strip_nulls(value: &mut Value) {
    match value {
        Value::Dict(_, dict) => {
            dict.retain(|_, v| !matches!(v, Value::Empty(..)));
            dict.values_mut().for_each(strip_nulls);
        }
        Value::Array(_, items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// A YAML value as a figment value. figment's own YAML provider needs
/// string keys, which would reject unquoted numeric ids such as a team `42:`;
/// this keeps every scalar key as its text. Duplicate keys, which YAML forbids
/// and which would silently keep one of two limits, are rejected here as well
/// as by the YAML parser, so the guarantee does not hang on parser details.
struct YamlNode(Value);

impl<'de> Deserialize<'de> for YamlNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<YamlNode, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = YamlNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::from(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::Empty(Tag::Default, Empty::Unit)))
    }

    fn visit_none<E: de::Error>(self) -> Result<YamlNode, E> {
        Ok(YamlNode(Value::Empty(Tag::Default, Empty::None)))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YamlNode, D::Error> {
        YamlNode::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<YamlNode, A::Error> {
        let mut items = Vec::new();
        while let Some(YamlNode(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(YamlNode(Value::Array(Tag::Default, items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YamlNode, A::Error> {
        let mut dict = Dict::new();
        while let Some(YamlKey(key)) = map.next_key()? {
            let YamlNode(value) = map.next_value()?;
            if dict.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
        }
        Ok(YamlNode(Value::Dict(Tag::Default, dict)))
    }
}

/// A mapping key: any scalar, as its text.
struct YamlKey(String);

impl<'de> Deserialize<'de> for YamlKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<YamlKey, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = YamlKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<YamlKey, E> {
        Ok(YamlKey(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<YamlKey, E> {
        Ok(YamlKey(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keys_numeric_keys_and_duplicates() {
        let value = parse("base: &b { x: 1, y: 2 }\nid:\n  <<: *b\n  y: 3\n42: true\n").unwrap();
        let id = value.find_ref("id").and_then(Value::as_dict).unwrap();
        assert_eq!(id.get("x").and_then(Value::to_u128), Some(1));
        assert_eq!(id.get("y").and_then(Value::to_u128), Some(3));
        assert!(value.find_ref("42").is_some());
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
    }
}
