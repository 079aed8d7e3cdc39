//! Structured outputs by prompting: ask for the format, validate what comes back, repair once.

use crate::prompts::{CHOOSE, REPAIR, SECTIONS, render};
use crate::{ChatModel, ChatParams, Choice, LlmError, Message, Sections, Usage};

fn header_of<'a>(line: &'a str, names: &[&str]) -> Option<(usize, &'a str)> {
    let t = line
        .trim_start()
        .trim_start_matches(['#', '*', '-', ' '])
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ')')
        .trim_start();
    for (i, name) in names.iter().enumerate() {
        if t.len() >= name.len()
            && t.is_char_boundary(name.len())
            && t[..name.len()].eq_ignore_ascii_case(name)
        {
            let rest = t[name.len()..].trim_start_matches(['*', ' ']);
            if let Some(body) = rest.strip_prefix(':') {
                return Some((i, body.trim_start_matches(['*', ' '])));
            }
        }
    }
    None
}

fn clip(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => s[..i].trim_end().to_owned(),
        None => s.to_owned(),
    }
}

/// Splits `text` at `Name:` headers; every name must appear once, in order, with text.
/// Sections longer than `max_chars` are cut at that many characters.
pub fn parse_sections(
    text: &str,
    names: &[&str],
    max_chars: usize,
) -> Result<Vec<(String, String)>, String> {
    let mut found: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        match header_of(line, names) {
            Some((i, body)) => found.push((i, body.to_owned())),
            None => {
                if let Some((_, body)) = found.last_mut() {
                    if !body.is_empty() {
                        body.push('\n');
                    }
                    body.push_str(line.trim());
                }
            }
        }
    }
    let order: Vec<usize> = found.iter().map(|(i, _)| *i).collect();
    let want: Vec<usize> = (0..names.len()).collect();
    if order != want {
        let got: Vec<&str> = order.iter().map(|i| names[*i]).collect();
        return Err(format!(
            "expected the sections {} in this order, found [{}]",
            names.join(", "),
            got.join(", ")
        ));
    }
    let mut out = Vec::with_capacity(names.len());
    for (i, body) in found {
        let body = body.trim();
        if body.is_empty() {
            return Err(format!("section {} is empty", names[i]));
        }
        out.push((names[i].to_owned(), clip(body, max_chars)));
    }
    Ok(out)
}

/// The chosen option's index and the reasoning, from `{"reasoning": ..., "choice": ...}` (the
/// JSON may sit inside other text) or from an answer that is exactly one option.
pub fn parse_choice(text: &str, options: &[String]) -> Result<(usize, String), String> {
    let find = |s: &str| {
        let s = s.trim().trim_matches(['"', '`', '.', ' ']);
        options
            .iter()
            .position(|o| o == s)
            .or_else(|| options.iter().position(|o| o.eq_ignore_ascii_case(s)))
    };
    if let (Some(start), Some(end)) = (text.find('{'), text.rfind('}'))
        && start < end
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text[start..=end])
    {
        let choice = v["choice"].as_str().unwrap_or_default();
        let reasoning = v["reasoning"].as_str().unwrap_or_default().to_owned();
        return match find(choice) {
            Some(i) => Ok((i, reasoning)),
            None => Err(format!(
                "choice {choice:?} is not one of: {}",
                options.join(", ")
            )),
        };
    }
    match find(text) {
        Some(i) => Ok((i, String::new())),
        None => Err(format!(
            "the answer names none of the options ({})",
            options.join(", ")
        )),
    }
}

pub(crate) fn check_options(options: &[String]) -> Result<(), LlmError> {
    if options.is_empty() {
        return Err(LlmError::InvalidRequest(
            "options: must not be empty".into(),
        ));
    }
    if let Some(i) = options.iter().position(|o| o.trim().is_empty()) {
        return Err(LlmError::InvalidRequest(format!(
            "options[{i}]: must not be empty"
        )));
    }
    Ok(())
}

/// Asks, validates with `parse`, and on failure shows the model its answer and the problem
/// once; a second failure is an error.
pub(crate) async fn ask_validated<T, F, Fut>(
    mut messages: Vec<Message>,
    call: F,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, Usage), LlmError>
where
    F: Fn(Vec<Message>) -> Fut,
    Fut: std::future::Future<Output = Result<crate::Completion, LlmError>>,
{
    let mut usage = Usage::default();
    let first = call(messages.clone()).await?;
    usage.add(first.usage);
    let problem = match parse(&first.text) {
        Ok(v) => return Ok((v, usage)),
        Err(p) => p,
    };
    tracing::debug!(%problem, "structured output invalid, repairing once");
    messages.push(Message::assistant(first.text));
    messages.push(Message::user(render(&REPAIR, &[("problem", &problem)])));
    let second = call(messages).await?;
    usage.add(second.usage);
    parse(&second.text)
        .map(|v| (v, usage))
        .map_err(LlmError::InvalidOutput)
}

/// Checks a `sections` request: messages with text, at least one section name.
pub(crate) fn check_sections_request(messages: &[Message], names: &[&str]) -> Result<(), LlmError> {
    crate::check_messages(messages)?;
    if names.is_empty() {
        return Err(LlmError::InvalidRequest("names: must not be empty".into()));
    }
    Ok(())
}

/// The conversation with one more user message carrying the format instruction.
pub(crate) fn with_instruction(messages: &[Message], instruction: String) -> Vec<Message> {
    let mut out = messages.to_vec();
    out.push(Message::user(instruction));
    out
}

pub(crate) async fn sections_by_prompt<M: ChatModel + ?Sized>(
    model: &M,
    messages: &[Message],
    names: &[&str],
    max_chars: usize,
) -> Result<Sections, LlmError> {
    check_sections_request(messages, names)?;
    let list = names
        .iter()
        .map(|n| format!("{n}:"))
        .collect::<Vec<_>>()
        .join("\n");
    let msgs = with_instruction(messages, render(&SECTIONS, &[("sections", &list)]));
    let params = ChatParams::default();
    let call = |m: Vec<Message>| {
        let params = &params;
        async move { model.chat(&m, params).await }
    };
    let (sections, usage) =
        ask_validated(msgs, call, |t| parse_sections(t, names, max_chars)).await?;
    Ok(Sections { sections, usage })
}

pub(crate) async fn choose_by_prompt<M: ChatModel + ?Sized>(
    model: &M,
    messages: &[Message],
    options: &[String],
) -> Result<Choice, LlmError> {
    crate::check_messages(messages)?;
    check_options(options)?;
    let list = options
        .iter()
        .map(|o| format!("- {o}"))
        .collect::<Vec<_>>()
        .join("\n");
    let msgs = with_instruction(messages, render(&CHOOSE, &[("options", &list)]));
    let params = ChatParams {
        max_tokens: 256,
        ..Default::default()
    };
    let call = |m: Vec<Message>| {
        let params = &params;
        async move { model.chat(&m, params).await }
    };
    let ((index, reasoning), usage) =
        ask_validated(msgs, call, |t| parse_choice(t, options)).await?;
    Ok(Choice {
        index,
        option: options[index].clone(),
        reasoning,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 4] = ["Situation", "Evaluation", "Alternatives", "Conclusion"];

    #[test]
    fn sections_in_order_with_markdown_headers() {
        let text = "**Situation:** car ahead is slow\n## Evaluation: braking kept distance\n\
                    more detail\n3. Alternatives: overtaking was risky\nConclusion: brake early";
        let s = parse_sections(text, &NAMES, 1000).unwrap();
        assert_eq!(s[0], ("Situation".into(), "car ahead is slow".into()));
        assert_eq!(s[1].1, "braking kept distance\nmore detail");
        assert_eq!(s[3].1, "brake early");
    }

    #[test]
    fn sections_missing_out_of_order_or_empty_are_refused() {
        assert!(parse_sections("Situation: a\nConclusion: b", &NAMES, 100).is_err());
        let swapped = "Evaluation: a\nSituation: b\nAlternatives: c\nConclusion: d";
        assert!(parse_sections(swapped, &NAMES, 100).is_err());
        let empty = "Situation: a\nEvaluation:\nAlternatives: c\nConclusion: d";
        assert!(
            parse_sections(empty, &NAMES, 100)
                .unwrap_err()
                .contains("Evaluation")
        );
        let long = format!(
            "Situation: {}\nEvaluation: b\nAlternatives: c\nConclusion: d",
            "x".repeat(50)
        );
        assert_eq!(parse_sections(&long, &NAMES, 10).unwrap()[0].1.len(), 10);
    }

    #[test]
    fn choices_from_json_or_bare_answers() {
        let opts: Vec<String> = ["brake", "accelerate", "keep_lane"]
            .map(String::from)
            .to_vec();
        let (i, r) = parse_choice(
            "Sure! {\"reasoning\": \"gap closing\", \"choice\": \"brake\"}",
            &opts,
        )
        .unwrap();
        assert_eq!((i, r.as_str()), (0, "gap closing"));
        assert_eq!(parse_choice("Keep_Lane", &opts).unwrap().0, 2);
        assert!(
            parse_choice("{\"choice\": \"fly\"}", &opts)
                .unwrap_err()
                .contains("fly")
        );
        assert!(parse_choice("I would slow down", &opts).is_err());
    }
}
