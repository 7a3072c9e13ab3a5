//! Python's ways of turning values into text, which chat templates written for Jinja2 rely
//! on: `str()` of a value printed with `{{ }}` (`True`, `None`, `{'k': 'v'}`), and
//! `json.dumps` as Hugging Face's `tojson` filter calls it (no HTML escaping, Python's
//! separators, `indent` / `ensure_ascii` / `separators` / `sort_keys` arguments).

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind};

use crate::tokenizer::unicode::{class, Class};

/// Python's `None` where Python would refuse to iterate it: `tools` when the caller passes
/// none. It is false, prints `None`, dumps as `null`, passes the `none` test and gives nothing
/// to the selecting filters, but a `for` over it fails as in Jinja2 (minijinja's own none
/// iterates as empty).
#[derive(Debug)]
pub(super) struct StrictNone;

impl Object for StrictNone {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }

    fn is_true(self: &Arc<Self>) -> bool {
        false
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("None")
    }
}

/// `value`, or an empty list for a [`StrictNone`]: Jinja2's `select`, `reject`,
/// `selectattr`, `rejectattr` and `map` yield nothing for a false value instead of iterating it.
fn none_as_empty(value: Value) -> Value {
    if value.downcast_object_ref::<StrictNone>().is_some() {
        Value::from(Vec::<Value>::new())
    } else {
        value
    }
}

/// The filters that accept a none `tools` in Jinja2, wrapping minijinja's own.
pub(super) fn add_none_tolerant_filters(env: &mut minijinja::Environment<'_>) {
    use minijinja::filters;
    use minijinja::value::Rest;
    use minijinja::State;
    use std::borrow::Cow;

    fn select(
        s: &State,
        v: Value,
        t: Option<Cow<'_, str>>,
        a: Rest<Value>,
    ) -> Result<Vec<Value>, Error> {
        filters::select(s, none_as_empty(v), t, a)
    }
    fn reject(
        s: &State,
        v: Value,
        t: Option<Cow<'_, str>>,
        a: Rest<Value>,
    ) -> Result<Vec<Value>, Error> {
        filters::reject(s, none_as_empty(v), t, a)
    }
    fn selectattr(
        s: &State,
        v: Value,
        attr: Cow<'_, str>,
        t: Option<Cow<'_, str>>,
        a: Rest<Value>,
    ) -> Result<Vec<Value>, Error> {
        filters::selectattr(s, none_as_empty(v), attr, t, a)
    }
    fn rejectattr(
        s: &State,
        v: Value,
        attr: Cow<'_, str>,
        t: Option<Cow<'_, str>>,
        a: Rest<Value>,
    ) -> Result<Vec<Value>, Error> {
        filters::rejectattr(s, none_as_empty(v), attr, t, a)
    }
    fn map(s: &State, v: Value, a: Rest<Value>) -> Result<Vec<Value>, Error> {
        filters::map(s, none_as_empty(v), a)
    }
    env.add_filter("select", select);
    env.add_filter("reject", reject);
    env.add_filter("selectattr", selectattr);
    env.add_filter("rejectattr", rejectattr);
    env.add_filter("map", map);
}

/// Whether `v` is Python's `None` (minijinja's none or [`StrictNone`]).
pub(super) fn is_none(v: &Value) -> bool {
    v.is_none() || v.downcast_object_ref::<StrictNone>().is_some()
}

/// Python's `repr(float)`: the shortest text that reads back, exponent form below 1e-4 and
/// from 1e16 on.
pub(super) fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let e = format!("{x:e}");
        let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{x:?}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

fn number_text(v: &Value) -> String {
    if v.is_integer() {
        v.to_string()
    } else {
        match f64::try_from(v.clone()) {
            Ok(x) => float_repr(x),
            Err(_) => v.to_string(),
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has one and no double quote.
fn str_repr(s: &str, out: &mut String) {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            ' ' => out.push(' '),
            c if !printable(c) => {
                let cp = c as u32;
                let _ = match cp {
                    0..=0xFF => write!(out, "\\x{cp:02x}"),
                    0x100..=0xFFFF => write!(out, "\\u{cp:04x}"),
                    _ => write!(out, "\\U{cp:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(q);
}

/// Python's `str.isprintable` for one character: not a control, format, private-use,
/// unassigned or separator character (the space aside, handled by the caller).
fn printable(c: char) -> bool {
    !matches!(
        class(c),
        Class::Control | Class::Undefined | Class::Separator
    )
}

/// Python's `repr()` of a value inside a container.
fn repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::String => str_repr(v.as_str().unwrap_or_default(), out),
        _ => python_str(v, out),
    }
}

/// Python's `str()` of a value: what `{{ value }}` prints in Jinja2.
pub(super) fn python_str(v: &Value, out: &mut String) {
    if is_none(v) {
        out.push_str("None");
        return;
    }
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&number_text(v)),
        ValueKind::String => out.push_str(v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = v.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = v.try_iter() {
                for (i, k) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    repr(&k, out);
                    out.push_str(": ");
                    repr(&v.get_item(&k).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// How `json.dumps` lays its output out.
struct JsonStyle {
    /// `None`: one line; `Some(s)`: a new line and `s` per level.
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_value(v: &Value, style: &JsonStyle, level: usize, out: &mut String) -> Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &style.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    if is_none(v) {
        out.push_str("null");
        return Ok(());
    }
    match v.kind() {
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let t = number_text(v);
            out.push_str(match t.as_str() {
                "nan" => "NaN",
                "inf" => "Infinity",
                "-inf" => "-Infinity",
                t => t,
            });
        }
        ValueKind::String => json_str(v.as_str().unwrap_or_default(), style.ensure_ascii, out),
        ValueKind::Seq => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, level + 1);
                json_value(item, style, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, level + 1);
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or_default().to_string(),
                    _ => {
                        let mut s = String::new();
                        json_value(k, style, 0, &mut s)?;
                        s.trim_matches('"').to_string()
                    }
                };
                json_str(&key, style.ensure_ascii, out);
                out.push_str(&style.key_sep);
                json_value(&v.get_item(k).unwrap_or_default(), style, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// The `tojson` filter: `json.dumps(value, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` with the template's keyword arguments.
pub(super) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        Some(v) if is_none(&v) => None,
        None => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => {
                let n = v.as_i64().ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an int or a string",
                    )
                })?;
                " ".repeat(usize::try_from(n).unwrap_or(0))
            }
        }),
    };
    let (mut item_sep, mut key_sep) = if indent.is_some() {
        (",".to_string(), ": ".to_string())
    } else {
        (", ".to_string(), ": ".to_string())
    };
    if let Some(seps) = kwargs.get::<Option<Value>>("separators")? {
        if !is_none(&seps) {
            let parts: Vec<Value> = seps.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => {
                    item_sep = a.as_str().unwrap_or_default().to_string();
                    key_sep = b.as_str().unwrap_or_default().to_string();
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
    }
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        ensure_ascii,
        sort_keys,
    };
    let mut out = String::new();
    json_value(value, &style, 0, &mut out)?;
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(json: &str) -> Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn python_printing() {
        let mut s = String::new();
        python_str(
            &v(r#"{"b": [1, 2.5, true, null], "a": "it's", "c": "x\ny"}"#),
            &mut s,
        );
        assert_eq!(
            s,
            r#"{'b': [1, 2.5, True, None], 'a': "it's", 'c': 'x\ny'}"#
        );
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(1e20), "1e+20");
        assert_eq!(float_repr(1.5e-7), "1.5e-07");
        assert_eq!(float_repr(0.001), "0.001");
    }

    #[test]
    fn json_dumps() {
        let val = v(r#"{"b": [1, {"é": "ü"}], "a": []}"#);
        let dump = |kw: Vec<(&str, Value)>| {
            tojson(&val, Kwargs::from_iter(kw))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(dump(vec![]), r#"{"b": [1, {"é": "ü"}], "a": []}"#);
        assert_eq!(
            dump(vec![("ensure_ascii", Value::from(true))]),
            r#"{"b": [1, {"\u00e9": "\u00fc"}], "a": []}"#
        );
        assert_eq!(
            dump(vec![
                ("indent", Value::from(2)),
                ("sort_keys", Value::from(true))
            ]),
            "{\n  \"a\": [],\n  \"b\": [\n    1,\n    {\n      \"é\": \"ü\"\n    }\n  ]\n}"
        );
    }
}
