//! ollama `Modelfile`s for `laquant batch --ollama`: `FROM` the GGUF beside
//! it, a `TEMPLATE` (Go template syntax) translated from the GGUF's
//! `tokenizer.chat_template` when that Jinja template belongs to a family we
//! know (ChatML as Qwen and SmolLM use it, Llama 3, Mistral `[INST]`,
//! Zephyr/TinyLlama, Tulu as OLMo 2 uses it, `<|end|>` turns, `<start_of_turn>` turns, GPT-2's
//! former default of messages joined by EOS), a `SYSTEM` line for a default system prompt the template
//! hard-codes, and `PARAMETER stop` for the family's end-of-turn markers and
//! the GGUF's EOS/EOT tokens. An unknown template gets no `TEMPLATE` (ollama
//! then falls back to its own detection) and the summary says so.

use crate::gguf::GgufFile;
use std::path::Path;

/// A chat-template family we can translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    ChatMl,
    Llama3,
    Mistral,
    Zephyr,
    /// Zephyr's markers, but a newline after each system and user message and
    /// EOS after assistant ones only (Tulu, OLMo 2 Instruct).
    Tulu,
    /// Zephyr's markers, each message closed by `<|end|>` and a newline.
    EndTurn,
    StartOfTurn,
    /// Every message's text followed by EOS, no roles and no cue (the
    /// default template GPT-2's tokenizer classes had, still in GPT-2-family
    /// checkpoints).
    EosJoined,
}

/// [`Family::EosJoined`]'s Jinja, spaces removed, in its two spellings.
const EOS_JOINED: [&str; 2] = [
    "{%formessageinmessages%}{{message.content}}{{eos_token}}{%endfor%}",
    "{%formessageinmessages%}{{message['content']}}{{eos_token}}{%endfor%}",
];

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::ChatMl => "chatml",
            Family::Llama3 => "llama3",
            Family::Mistral => "mistral-inst",
            Family::Zephyr => "zephyr",
            Family::Tulu => "tulu",
            Family::EndTurn => "end-turn",
            Family::StartOfTurn => "start-of-turn",
            Family::EosJoined => "eos-joined",
        }
    }

    /// Recognizes a Jinja chat template by the markers only its family uses.
    pub fn detect(jinja: &str) -> Option<Family> {
        let has = |s: &str| jinja.contains(s);
        if has("<|im_start|>") && has("<|im_end|>") {
            Some(Family::ChatMl)
        } else if has("<|start_header_id|>") && has("<|eot_id|>") {
            Some(Family::Llama3)
        } else if has("[INST]") && has("[/INST]") {
            Some(Family::Mistral)
        } else if has("<|user|>") && has("<|assistant|>") && has("<|end|>") {
            Some(Family::EndTurn)
        } else if has("<|user|>") && has("<|assistant|>") {
            // A message followed by a newline (an escape or the character itself) is Tulu's.
            let nl = has("message['content'] + '\\n'") || has("message['content'] + '\n'");
            Some(if nl { Family::Tulu } else { Family::Zephyr })
        } else if has("<start_of_turn>") && has("<end_of_turn>") {
            Some(Family::StartOfTurn)
        } else if EOS_JOINED.contains(&jinja.replace(char::is_whitespace, "").as_str()) {
            Some(Family::EosJoined)
        } else {
            None
        }
    }

    /// The turn markers a reply must stop at.
    fn stops(self) -> &'static [&'static str] {
        match self {
            Family::ChatMl => &["<|im_start|>", "<|im_end|>"],
            Family::Llama3 => &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            Family::Mistral => &["[INST]", "[/INST]"],
            Family::Zephyr | Family::Tulu => &["<|system|>", "<|user|>", "<|assistant|>"],
            Family::EndTurn => &["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
            Family::StartOfTurn => &["<start_of_turn>", "<end_of_turn>"],
            // EOS, which every Modelfile stops at.
            Family::EosJoined => &[],
        }
    }

    /// The ollama template: messages in `.Messages`, then the assistant's cue.
    fn template(self, eos: &str) -> String {
        match self {
            Family::ChatMl => "{{- range .Messages }}<|im_start|>{{ .Role }}\n\
                 {{ .Content }}<|im_end|>\n\
                 {{ end }}<|im_start|>assistant\n"
                .to_string(),
            Family::Llama3 => "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n\
                 {{ .Content }}<|eot_id|>\
                 {{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
                .to_string(),
            // No system role in [INST] templates: the system prompt goes before the
            // last user message, as Mistral's own reference formatting does.
            Family::Mistral => format!(
                "{{{{- range $i, $_ := .Messages }}}}\
                 {{{{- if eq .Role \"user\" }}}}[INST] \
                 {{{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}}}{{{{ $.System }}}}\n\n{{{{ end }}}}\
                 {{{{ .Content }}}} [/INST]\
                 {{{{- else if eq .Role \"assistant\" }}}}{{{{ .Content }}}}{eos}\
                 {{{{- end }}}}\
                 {{{{- end }}}}"
            ),
            Family::Zephyr => format!(
                "{{{{- range .Messages }}}}<|{{{{ .Role }}}}|>\n\
                 {{{{ .Content }}}}{eos}\n\
                 {{{{ end }}}}<|assistant|>\n"
            ),
            Family::EndTurn => "{{- range .Messages }}<|{{ .Role }}|>\n\
                 {{ .Content }}<|end|>\n\
                 {{ end }}<|assistant|>\n"
                .to_string(),
            // EOS after assistant messages, and a newline after every message but a
            // last assistant one.
            Family::Tulu => format!(
                "{{{{- range $i, $_ := .Messages }}}}<|{{{{ .Role }}}}|>\n{{{{ .Content }}}}\
                 {{{{- if eq .Role \"assistant\" }}}}{eos}\
                 {{{{- if ne (len (slice $.Messages $i)) 1 }}}}\n{{{{ end }}}}\
                 {{{{- else }}}}\n{{{{ end }}}}\
                 {{{{- end }}}}<|assistant|>\n"
            ),
            // No system turn: the system prompt goes before the first turn's
            // text (as the templates that accept one put it); the assistant
            // is `model`.
            Family::StartOfTurn => "{{- $first := true }}{{- range .Messages }}\
                 {{- if ne .Role \"system\" }}<start_of_turn>\
                 {{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n\
                 {{ if and $first $.System }}{{ $.System }}\n\n{{ end }}{{ $first = false }}\
                 {{ .Content }}<end_of_turn>\n\
                 {{ end }}\
                 {{- end }}<start_of_turn>model\n"
                .to_string(),
            Family::EosJoined => format!("{{{{- range .Messages }}}}{{{{ .Content }}}}{eos}{{{{ end }}}}"),
        }
    }
}

/// A Modelfile and what the summary should say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Modelfile {
    pub text: String,
    pub family: Option<Family>,
    /// Set when the Modelfile lacks something a user would expect.
    pub note: Option<String>,
}

/// The default system prompt a ChatML template inserts when the conversation has
/// none (SmolLM2's, Qwen2.5's): the literal text between `<|im_start|>system\n`
/// and `<|im_end|>`, if it is plain text.
fn default_system(jinja: &str) -> Option<String> {
    let start = "<|im_start|>system";
    let mut rest = jinja;
    while let Some(i) = rest.find(start) {
        rest = &rest[i + start.len()..];
        let body = rest
            .strip_prefix("\\n")
            .or_else(|| rest.strip_prefix('\n'))
            .unwrap_or(rest);
        let Some(end) = body.find("<|im_end|>") else {
            break;
        };
        let text = &body[..end];
        if !text.is_empty() && !text.contains(['{', '}', '\'', '"', '+']) {
            return Some(text.replace("\\n", "\n").trim().to_string());
        }
    }
    None
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Modelfile for `gguf` (written beside it, so `FROM` names the file only).
pub fn modelfile(gguf: &Path) -> Result<Modelfile, crate::gguf::GgufError> {
    let f = GgufFile::open(gguf)?;
    let jinja = f
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let tokens: Vec<String> = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|t| t.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let token = |key: &str| {
        f.get(key)
            .and_then(|v| v.as_u64())
            .and_then(|id| tokens.get(id as usize))
            .filter(|t| !t.is_empty())
            .cloned()
    };
    let eos = token("tokenizer.ggml.eos_token_id");
    let eot = token("tokenizer.ggml.eot_token_id");
    let file_name = gguf
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(build(
        &file_name,
        jinja.as_deref(),
        eos.as_deref(),
        eot.as_deref(),
    ))
}

/// Builds the Modelfile text from what the GGUF holds.
pub fn build(
    file_name: &str,
    jinja: Option<&str>,
    eos: Option<&str>,
    eot: Option<&str>,
) -> Modelfile {
    let mut text = format!("# Made by laquant {}\n", env!("CARGO_PKG_VERSION"));
    text.push_str(&format!("FROM ./{file_name}\n"));
    let family = jinja.and_then(Family::detect);
    let note = match (jinja, family) {
        (None, _) => Some("no chat template in the checkpoint: no TEMPLATE".to_string()),
        (Some(_), None) => Some("chat template of an unknown family: no TEMPLATE".to_string()),
        _ => None,
    };
    let mut stops: Vec<String> = Vec::new();
    if let Some(fam) = family {
        let eos_text = eos.unwrap_or("</s>");
        text.push_str(&format!(
            "TEMPLATE \"\"\"{}\"\"\"\n",
            fam.template(eos_text)
        ));
        if fam == Family::ChatMl {
            if let Some(sys) = jinja.and_then(default_system) {
                text.push_str(&format!("SYSTEM {}\n", quote(&sys)));
            }
        }
        stops.extend(fam.stops().iter().map(|s| s.to_string()));
    }
    for t in [eot, eos].into_iter().flatten() {
        if !stops.iter().any(|s| s == t) {
            stops.push(t.to_string());
        }
    }
    for s in &stops {
        text.push_str(&format!("PARAMETER stop {}\n", quote(s)));
    }
    Modelfile { text, family, note }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    const LLAMA3: &str = "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}";
    const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";
    const TULU: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}{% endfor %}";
    const GEMMA: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}";
    const END_TURN: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}";
    const EOS_JOINED_GPT2: &str =
        "{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}";
    const ZEPHYR: &str = "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}{% endfor %}";

    #[test]
    fn families_are_recognized() {
        assert_eq!(Family::detect(CHATML), Some(Family::ChatMl));
        assert_eq!(Family::detect(SMOL), Some(Family::ChatMl));
        assert_eq!(Family::detect(LLAMA3), Some(Family::Llama3));
        assert_eq!(Family::detect(MISTRAL), Some(Family::Mistral));
        assert_eq!(Family::detect(ZEPHYR), Some(Family::Zephyr));
        assert_eq!(Family::detect(TULU), Some(Family::Tulu));
        let real_newline = TULU.replace("\\n", "\n");
        assert_eq!(Family::detect(&real_newline), Some(Family::Tulu));
        assert_eq!(Family::detect(GEMMA), Some(Family::StartOfTurn));
        assert_eq!(Family::detect(END_TURN), Some(Family::EndTurn));
        assert_eq!(Family::detect(EOS_JOINED_GPT2), Some(Family::EosJoined));
        let m = build("g.gguf", Some(EOS_JOINED_GPT2), Some("<|endoftext|>"), None);
        assert!(m.text.contains(
            "TEMPLATE \"\"\"{{- range .Messages }}{{ .Content }}<|endoftext|>{{ end }}\"\"\""
        ));
        // Anything more than the messages and EOS is not this family.
        assert_eq!(
            Family::detect(
                &EOS_JOINED_GPT2.replace("{{ message.content }}", "{{ '> ' + message.content }}")
            ),
            None
        );
        assert_eq!(Family::detect("{{ messages[0]['content'] }}"), None);
    }

    #[test]
    fn chatml_modelfile() {
        let m = build("m-Q8_0.gguf", Some(CHATML), Some("<|im_end|>"), None);
        assert_eq!(
            m.text,
            format!(
                "# Made by laquant {}\nFROM ./m-Q8_0.gguf\n\
                 TEMPLATE \"\"\"{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}\n\
                 {{{{ .Content }}}}<|im_end|>\n{{{{ end }}}}<|im_start|>assistant\n\"\"\"\n\
                 PARAMETER stop \"<|im_start|>\"\nPARAMETER stop \"<|im_end|>\"\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(m.note, None);
    }

    #[test]
    fn smollm_default_system_prompt_is_kept() {
        let m = build("s.gguf", Some(SMOL), Some("<|im_end|>"), None);
        assert!(m.text.contains(
            "SYSTEM \"You are a helpful AI assistant named SmolLM, trained by Hugging Face\"\n"
        ));
        assert_eq!(default_system(CHATML), None);
    }

    #[test]
    fn other_families_stop_at_their_markers_and_eos() {
        let m = build(
            "l.gguf",
            Some(LLAMA3),
            Some("<|end_of_text|>"),
            Some("<|eot_id|>"),
        );
        assert!(m
            .text
            .contains("<|start_header_id|>assistant<|end_header_id|>\n\n\"\"\""));
        for s in ["<|eot_id|>", "<|end_header_id|>", "<|end_of_text|>"] {
            assert!(m.text.contains(&format!("PARAMETER stop \"{s}\"")), "{s}");
        }
        assert_eq!(
            m.text.matches("<|eot_id|>\"").count(),
            1,
            "no duplicate stop"
        );
        let m = build("m.gguf", Some(MISTRAL), Some("</s>"), None);
        assert!(m.text.contains("{{ .Content }} [/INST]"));
        assert!(m.text.contains("{{ .Content }}</s>"));
        assert!(m.text.contains("PARAMETER stop \"[INST]\"\n"));
        let m = build("z.gguf", Some(ZEPHYR), Some("</s>"), None);
        assert!(m
            .text
            .contains("<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n"));
        assert!(m.text.contains("PARAMETER stop \"</s>\"\n"));
        let m = build("t.gguf", Some(TULU), Some("<|endoftext|>"), None);
        assert!(m
            .text
            .contains("{{- if eq .Role \"assistant\" }}<|endoftext|>"));
        assert!(m.text.contains("PARAMETER stop \"<|user|>\"\n"));
        let m = build("p.gguf", Some(END_TURN), Some("</s>"), None);
        assert!(m
            .text
            .contains("<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"));
        assert!(m.text.contains("PARAMETER stop \"<|end|>\"\n"));
        let m = build("g.gguf", Some(GEMMA), Some("<eos>"), None);
        assert!(m.text.contains(
            "{{ .Content }}<end_of_turn>\n{{ end }}{{- end }}<start_of_turn>model\n\"\"\""
        ));
        for s in ["<start_of_turn>", "<end_of_turn>", "<eos>"] {
            assert!(m.text.contains(&format!("PARAMETER stop \"{s}\"")), "{s}");
        }
    }

    #[test]
    fn unknown_or_missing_template_has_no_template_and_a_note() {
        let m = build("u.gguf", Some("{{ messages }}"), Some("</s>"), None);
        assert!(!m.text.contains("TEMPLATE"));
        assert!(m.text.contains("PARAMETER stop \"</s>\""));
        assert!(m.note.unwrap().contains("unknown"));
        let m = build("u.gguf", None, None, None);
        assert!(m.note.unwrap().contains("no chat template"));
    }
}
