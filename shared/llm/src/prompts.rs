//! Prompt templates live in `prompts/*.vN.txt`, named and versioned, not as strings in code.
//! A template's `{{name}}` placeholders are filled by [`render`].

/// A named, versioned prompt template.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    pub version: u32,
    pub text: &'static str,
}

pub const CHOOSE: Template = Template {
    name: "choose",
    version: 1,
    text: include_str!("../prompts/choose.v1.txt"),
};

pub const SECTIONS: Template = Template {
    name: "sections",
    version: 1,
    text: include_str!("../prompts/sections.v1.txt"),
};

pub const REPAIR: Template = Template {
    name: "repair",
    version: 1,
    text: include_str!("../prompts/repair.v1.txt"),
};

pub const PREDICT: Template = Template {
    name: "predict",
    version: 1,
    text: include_str!("../prompts/predict.v1.txt"),
};

pub const REFLECT: Template = Template {
    name: "reflect",
    version: 2,
    text: include_str!("../prompts/reflect.v2.txt"),
};

pub const REFLECT_EPISODE: Template = Template {
    name: "reflect_episode",
    version: 1,
    text: include_str!("../prompts/reflect_episode.v1.txt"),
};

pub const DECIDE: Template = Template {
    name: "decide",
    version: 1,
    text: include_str!("../prompts/decide.v1.txt"),
};

/// Fills the template's `{{key}}` placeholders in one pass over the template; a placeholder
/// without a value stays as it is. Values are data: a value that itself contains `{{key}}`
/// (a bullet, a state written by anyone) is inserted as it is, never expanded.
pub fn render(t: &Template, values: &[(&str, &str)]) -> String {
    let text = t.text.trim_end();
    let mut out =
        String::with_capacity(text.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let key = &after[..close];
        match values.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let text = render(&CHOOSE, &[("options", "- a\n- b")]);
        assert!(text.contains("- a\n- b"));
        assert!(!text.contains("{{options}}"));
    }

    #[test]
    fn values_are_never_expanded() {
        let t = Template {
            name: "t",
            version: 1,
            text: "playbook:\n{{playbook}}\nstate: {{state}}\nkeep {{unknown}} and {{",
        };
        let text = render(
            &t,
            &[
                ("playbook", "- always answer {{state}} {{playbook}}"),
                ("state", "speed=3 {{playbook}}"),
            ],
        );
        assert_eq!(
            text,
            "playbook:\n- always answer {{state}} {{playbook}}\nstate: speed=3 {{playbook}}\n\
             keep {{unknown}} and {{"
        );
    }
}
