//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`), rendered with
//! minijinja set up the way Hugging Face transformers sets up Jinja2 (`apply_chat_template`),
//! or a built-in one for models that ship none. Every command renders through here.
//!
//! Jinja2 behaviour reproduced: `trim_blocks` and `lstrip_blocks`, `break`/`continue`,
//! Python's string, dict and list methods (minijinja-contrib's pycompat), Python's printing of
//! values (`True`, `None`, `{'k': 'v'}`), `tojson` as `json.dumps` with its keyword arguments,
//! the globals `raise_exception(msg)` and `strftime_now(fmt)`, the `{% generation %}` tag of
//! transformers (its body renders unchanged), and a `tools` of none that cannot be iterated.
//! Not reproduced: what Jinja2's immutable sandbox refuses (`list.append`), and Python's own
//! type errors (`str + dict`, dumping a generator).

mod python;
mod strftime;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

pub use strftime::DateTime;

/// One chat message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Errors of template rendering.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct ChatTemplateError(String);

impl From<Error> for ChatTemplateError {
    fn from(e: Error) -> Self {
        // The error and its causes on one line, with where in the template it happened.
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        ChatTemplateError(msg)
    }
}

/// What a template is rendered with: the variables transformers passes.
#[derive(Debug, Clone)]
pub struct ChatContext {
    messages: Value,
    tools: Value,
    add_generation_prompt: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    date: DateTime,
}

/// The JSON form of [`ChatContext`], key order kept.
#[derive(Deserialize)]
struct ContextJson {
    messages: Value,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    add_generation_prompt: bool,
    #[serde(default)]
    bos_token: Option<String>,
    #[serde(default)]
    eos_token: Option<String>,
    #[serde(default)]
    date: Option<String>,
}

impl ChatContext {
    /// Plain messages, no tools, dated now.
    pub fn new(messages: &[Message], add_generation_prompt: bool) -> Self {
        ChatContext {
            messages: Value::from_serialize(messages),
            tools: Value::from_object(python::StrictNone),
            add_generation_prompt,
            bos_token: None,
            eos_token: None,
            date: DateTime::now(),
        }
    }

    /// From JSON: `{"messages": [...], "tools": [...] | null, "add_generation_prompt": bool,
    /// "bos_token": str, "eos_token": str, "date": "YYYY-MM-DD"}` (all but `messages`
    /// optional; `bos_token`/`eos_token` override the template's, `date` is what
    /// `strftime_now` sees, default now). Messages and tools may hold any JSON (tool calls,
    /// content parts); the order of keys is kept, as templates print it. Other keys are
    /// ignored, so a golden record (which also holds the expected text) is its own context.
    pub fn from_json(text: &str) -> Result<Self, ChatTemplateError> {
        let j: ContextJson = serde_json::from_str(text)
            .map_err(|e| ChatTemplateError(format!("context JSON: {e}")))?;
        let date = match &j.date {
            Some(d) => DateTime::parse_date(d).ok_or_else(|| {
                ChatTemplateError(format!("context JSON: date {d:?} is not YYYY-MM-DD"))
            })?,
            None => DateTime::now(),
        };
        Ok(ChatContext {
            messages: j.messages,
            tools: match j.tools {
                Some(t) if !t.is_none() => t,
                _ => Value::from_object(python::StrictNone),
            },
            add_generation_prompt: j.add_generation_prompt,
            bos_token: j.bos_token,
            eos_token: j.eos_token,
            date,
        })
    }
}

/// A chat template ready to render.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos: String,
    eos: String,
}

/// ChatML, used when a model ships no template and is not one of the known families.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's turn format (Gemma 3 GGUFs often ship without a template).
const GEMMA: &str = "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{% if role == 'system' %}{% set role = 'user' %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// Rewrites transformers' `{% generation %}` / `{% endgeneration %}` (which mark the
/// assistant's tokens and render their body unchanged) into an always-true `if`, keeping the
/// whitespace control marks.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        let replaced = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replaced {
            Some(r) => out.push_str(&format!("{{%{lead} {r} {trail}%}}")),
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

impl ChatTemplate {
    /// The model's template if it has one, else a built-in one for its architecture
    /// (`gemma*`: Gemma turns; otherwise ChatML).
    pub fn new(model_template: Option<&str>, arch: &str, bos: &str, eos: &str) -> Self {
        let source = match model_template {
            Some(t) if !t.trim().is_empty() => t.to_string(),
            _ if arch.starts_with("gemma") => GEMMA.to_string(),
            _ => CHATML.to_string(),
        };
        ChatTemplate {
            source,
            bos: bos.to_string(),
            eos: eos.to_string(),
        }
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS text the template may write (empty when the model has none).
    pub fn bos(&self) -> &str {
        &self.bos
    }

    /// Renders `messages`, ending with the assistant's turn opener when
    /// `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_context(&ChatContext::new(messages, add_generation_prompt))
    }

    /// Renders the template with `ctx`'s variables. Fails where the template raises
    /// (`raise_exception`), uses what is not there, or is not valid Jinja.
    pub fn render_context(&self, ctx: &ChatContext) -> Result<String, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            let mut s = String::new();
            python::python_str(value, &mut s);
            out.write_str(&s).map_err(Error::from)
        });
        env.add_filter("tojson", |v: &Value, kwargs: Kwargs| {
            python::tojson(v, kwargs)
        });
        env.add_filter("string", |v: &Value| {
            if v.as_str().is_some() {
                return v.clone();
            }
            let mut s = String::new();
            python::python_str(v, &mut s);
            Value::from(s)
        });
        env.add_test("none", |v: &Value| python::is_none(v));
        python::add_none_tolerant_filters(&mut env);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        let date = ctx.date;
        env.add_function("strftime_now", move |fmt: String| date.strftime(&fmt));
        let source = rewrite_generation_tags(&self.source);
        let tmpl = env.template_from_str(&source)?;
        let bos = ctx.bos_token.as_deref().unwrap_or(&self.bos);
        let eos = ctx.eos_token.as_deref().unwrap_or(&self.eos);
        Ok(tmpl.render(minijinja::context! {
            messages => ctx.messages,
            tools => ctx.tools,
            add_generation_prompt => ctx.add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_templates() {
        let m = [Message::new("user", "Hi")];
        let t = ChatTemplate::new(None, "gemma3", "<bos>", "<eos>");
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        let t = ChatTemplate::new(None, "llama", "", "");
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn model_template_with_python_methods_and_errors() {
        let src = "{% for m in messages %}{% if m.role not in ['user'] %}{{ raise_exception('bad role') }}{% endif %}[{{ m.content.strip() }}]{% endfor %}";
        let t = ChatTemplate::new(Some(src), "llama", "", "");
        assert_eq!(
            t.render(&[Message::new("user", " x ")], false).unwrap(),
            "[x]"
        );
        let e = t.render(&[Message::new("system", "x")], false).unwrap_err();
        assert!(e.to_string().contains("bad role"), "{e}");
        let t = ChatTemplate::new(Some("{% for %}"), "llama", "", "");
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn jinja2_settings_and_python_values() {
        let src = "{% for m in messages %}\n  {{ m }}|{{ m.n is number }}|{{ tools is none }}\n{% endfor %}\n{%- generation -%} {{ strftime_now('%d %b %Y') }} {%- endgeneration %}";
        let t = ChatTemplate::new(Some(src), "llama", "", "");
        let ctx = ChatContext::from_json(
            r#"{"messages": [{"z": true, "a": null, "n": 1.5}], "tools": null, "date": "2026-12-03"}"#,
        )
        .unwrap();
        assert_eq!(
            t.render_context(&ctx).unwrap(),
            "  {'z': True, 'a': None, 'n': 1.5}|True|True\n03 Dec 2026"
        );
        // Iterating a none `tools` fails as in Jinja2.
        let t = ChatTemplate::new(Some("{% for t in tools %}x{% endfor %}"), "llama", "", "");
        assert!(t.render_context(&ctx).is_err());
        assert!(ChatContext::from_json(r#"{"messages": [], "date": "soon"}"#).is_err());
    }
}
