//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`), rendered with
//! minijinja, or a built-in one for models that ship none.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

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
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source)
            .map_err(|e| ChatTemplateError(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| ChatTemplateError(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| ChatTemplateError(e.to_string()))
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
}
