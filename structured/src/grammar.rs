//! What the output must be: a JSON schema, any JSON object, or a Lark grammar.

use llguidance::api::TopLevelGrammar;
use llguidance::JsonCompileOptions;
use serde_json::{json, Value};

use crate::StructuredError;

/// An output format. Building one checks only its shape; the grammar is compiled (and its
/// errors reported) by [`Constraint::new`](crate::Constraint::new).
///
/// JSON output is written on one line with `", "` between items and `": "` after keys
/// (Python's `json.dumps` style, close to what models saw in training); a schema may choose
/// otherwise with llguidance's `"x-guidance"` key (e.g.
/// `{"whitespace_flexible": true}`).
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `{"type": "json_object"}`).
    JsonObject,
    /// JSON that validates against this schema (objects with `properties`, `required`,
    /// `additionalProperties`, arrays with `items`/`prefixItems`/`minItems`/`maxItems`,
    /// `enum`, `const`, numbers with bounds, strings with `pattern`, `minLength`,
    /// `maxLength` and common `format`s, `anyOf`/`oneOf`/`allOf`, local `$ref`/`$defs`).
    JsonSchema(Value),
    /// A Lark grammar in llguidance's dialect (`start` is the top rule; `%json {...}`
    /// embeds a JSON schema; `<|im_end|>` names a special token).
    Lark(String),
}

impl Grammar {
    /// Any JSON object.
    pub fn json_object() -> Grammar {
        Grammar::JsonObject
    }

    /// JSON fitting `schema` (the schema itself, not OpenAI's
    /// `{"name","schema","strict"}` wrapper: see [`from_response_format`](Self::from_response_format)).
    pub fn json_schema(schema: &Value) -> Grammar {
        Grammar::JsonSchema(schema.clone())
    }

    /// Text matching a Lark grammar.
    pub fn lark(source: &str) -> Grammar {
        Grammar::Lark(source.to_string())
    }

    /// The grammar for an OpenAI `response_format` value: `{"type":"text"}` gives `None`
    /// (no constraint), `{"type":"json_object"}` any object, and
    /// `{"type":"json_schema","json_schema":{"name":..,"schema":{..},"strict":..}}` the
    /// schema (`strict` is accepted either way: the output always fits).
    pub fn from_response_format(
        response_format: &Value,
    ) -> Result<Option<Grammar>, StructuredError> {
        let bad = |m: &str| Err(StructuredError::ResponseFormat(m.to_string()));
        let Some(obj) = response_format.as_object() else {
            return bad("expected an object such as {\"type\": \"json_object\"}");
        };
        match obj.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(Grammar::JsonObject)),
            Some("json_schema") => {
                let Some(js) = obj.get("json_schema").and_then(Value::as_object) else {
                    return bad("type \"json_schema\" needs a \"json_schema\" object with \"name\" and \"schema\"");
                };
                match js.get("name") {
                    Some(Value::String(n)) if !n.is_empty() => {}
                    _ => return bad("json_schema.name must be a non-empty string"),
                }
                if let Some(s) = js.get("strict") {
                    if !s.is_boolean() && !s.is_null() {
                        return bad("json_schema.strict must be a boolean");
                    }
                }
                match js.get("schema") {
                    // OpenAI treats a missing schema as "any JSON".
                    None => Ok(Some(Grammar::JsonSchema(json!({})))),
                    Some(s) => Ok(Some(Grammar::JsonSchema(s.clone()))),
                }
            }
            Some(other) => bad(&format!(
                "unknown type {other:?}: expected \"text\", \"json_object\" or \"json_schema\""
            )),
            None => bad("missing \"type\" (\"text\", \"json_object\" or \"json_schema\")"),
        }
    }

    /// What kind of grammar this is, for messages (`JSON schema`, `Lark grammar`).
    pub fn kind(&self) -> &'static str {
        match self {
            Grammar::JsonObject | Grammar::JsonSchema(_) => "JSON schema",
            Grammar::Lark(_) => "Lark grammar",
        }
    }

    /// llguidance's form of the grammar.
    pub(crate) fn to_llguidance(&self) -> Result<TopLevelGrammar, StructuredError> {
        match self {
            Grammar::JsonObject => Ok(TopLevelGrammar::from_json_schema(with_layout(
                json!({"type": "object"}),
            ))),
            Grammar::JsonSchema(schema) => match schema {
                Value::Object(_) => Ok(TopLevelGrammar::from_json_schema(with_layout(
                    schema.clone(),
                ))),
                Value::Bool(true) => Ok(TopLevelGrammar::from_json_schema(with_layout(json!({})))),
                Value::Bool(false) => Err(StructuredError::InvalidSchema {
                    reason: "the schema `false` allows no value".into(),
                }),
                other => Err(StructuredError::InvalidSchema {
                    reason: format!(
                        "a schema is an object (or true/false), not {}",
                        json_kind(other)
                    ),
                }),
            },
            Grammar::Lark(src) => {
                if src.trim().is_empty() {
                    return Err(StructuredError::InvalidGrammar {
                        reason: "the grammar is empty: give at least a `start: ...` rule".into(),
                    });
                }
                Ok(TopLevelGrammar::from_lark(src.clone()))
            }
        }
    }
}

/// The schema with our JSON layout unless it sets `x-guidance` itself.
fn with_layout(mut schema: Value) -> Value {
    if schema.get("x-guidance").is_none() {
        let opts = JsonCompileOptions {
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            whitespace_flexible: false,
            ..JsonCompileOptions::default()
        };
        opts.apply_to(&mut schema);
    }
    schema
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats() {
        assert_eq!(
            Grammar::from_response_format(&json!({"type": "text"})).unwrap(),
            None
        );
        assert_eq!(
            Grammar::from_response_format(&json!({"type": "json_object"})).unwrap(),
            Some(Grammar::JsonObject)
        );
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let rf = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s, "strict": true}});
        assert_eq!(
            Grammar::from_response_format(&rf).unwrap(),
            Some(Grammar::JsonSchema(s))
        );
        for (bad, says) in [
            (json!("json_object"), "expected an object"),
            (json!({"type": "yaml"}), "unknown type \"yaml\""),
            (json!({}), "missing \"type\""),
            (
                json!({"type": "json_schema"}),
                "needs a \"json_schema\" object",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": {}}}),
                "json_schema.name",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}),
                "strict must be a boolean",
            ),
        ] {
            let e = Grammar::from_response_format(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn layout_is_added_unless_the_schema_sets_it() {
        let g = Grammar::json_schema(&json!({"type": "integer"}));
        let Grammar::JsonSchema(s) = &g else { panic!() };
        assert!(
            s.get("x-guidance").is_none(),
            "the stored schema is the caller's"
        );
        let s = with_layout(json!({"type": "integer"}));
        assert_eq!(s["x-guidance"]["whitespace_flexible"], json!(false));
        let own = json!({"type": "integer", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(with_layout(own.clone()), own);
    }

    #[test]
    fn schemas_of_the_wrong_kind_are_named() {
        let e = Grammar::json_schema(&json!([1]))
            .to_llguidance()
            .unwrap_err();
        assert!(e.to_string().contains("not an array"), "{e}");
        let e = Grammar::json_schema(&json!(false))
            .to_llguidance()
            .unwrap_err();
        assert!(e.to_string().contains("allows no value"), "{e}");
        let e = Grammar::lark("  ").to_llguidance().unwrap_err();
        assert!(e.to_string().contains("start"), "{e}");
    }
}
