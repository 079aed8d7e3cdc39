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

pub const DECIDE: Template = Template {
    name: "decide",
    version: 1,
    text: include_str!("../prompts/decide.v1.txt"),
};

/// Fills `{{key}}` placeholders; a placeholder without a value stays as it is.
pub fn render(t: &Template, values: &[(&str, &str)]) -> String {
    let mut out = t.text.trim_end().to_owned();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
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
}
