//! Rendering bullets as a playbook section within a token budget.

use agent_learning_domain::{Bullet, estimate_tokens};

/// Ranking score: relevance to the state, weighted by the bullet's track record (Laplace-
/// smoothed helpful rate, so an unrated bullet scores as neutral).
pub fn score(similarity: f32, b: &Bullet) -> f32 {
    let quality = (b.helpful as f32 + 1.0) / ((b.helpful + b.harmful) as f32 + 2.0);
    similarity * (0.75 + 0.5 * quality)
}

const HEADING: &str = "## Playbook\n";

fn section_heading(section: &str) -> String {
    format!("### {section}\n")
}

fn line(b: &Bullet) -> String {
    let id = b.id.simple().to_string();
    format!("- [{}] {}\n", &id[..8], b.content.trim())
}

/// Words and bytes of a piece of the rendered text. Every piece ends with a newline, so the
/// text's counts are the sums of its pieces' and [`estimate_tokens`] of the whole follows
/// from them without rendering it.
#[derive(Clone, Copy, Default)]
struct Size {
    words: usize,
    bytes: usize,
}

impl Size {
    fn of(piece: &str) -> Self {
        Self {
            words: piece.split_whitespace().count(),
            bytes: piece.len(),
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            words: self.words + other.words,
            bytes: self.bytes + other.bytes,
        }
    }

    fn tokens(self) -> u32 {
        u32::try_from(self.words.max(self.bytes.div_ceil(4))).unwrap_or(u32::MAX)
    }
}

/// Picks bullets in `ranked` order (best first) while the rendered text fits `budget` tokens;
/// a bullet that does not fit is skipped so a shorter one after it may still fit. A bullet of
/// a section not in `sections` is never shown, so never picked. Each bullet's line is sized
/// once: the cost is linear in `ranked`.
pub fn fit<'a>(
    sections: &[String],
    ranked: &'a [Bullet],
    budget: u32,
) -> (String, Vec<&'a Bullet>, u32) {
    let mut chosen: Vec<(&'a Bullet, String)> = Vec::new();
    let mut opened = vec![false; sections.len()];
    let mut size = Size::default();
    for b in ranked {
        let Some(s) = sections.iter().position(|s| *s == b.section) else {
            continue;
        };
        let line = line(b);
        let mut grown = size.plus(Size::of(&line));
        if chosen.is_empty() {
            grown = grown.plus(Size::of(HEADING));
        }
        if !opened[s] {
            grown = grown.plus(Size::of(&section_heading(&sections[s])));
        }
        if grown.tokens() <= budget {
            size = grown;
            opened[s] = true;
            chosen.push((b, line));
        }
    }
    if chosen.is_empty() {
        return (String::new(), Vec::new(), 0);
    }
    let mut text = String::with_capacity(size.bytes);
    text.push_str(HEADING);
    for section in sections {
        let mut first = true;
        for (_, line) in chosen.iter().filter(|(b, _)| &b.section == section) {
            if first {
                text.push_str(&section_heading(section));
                first = false;
            }
            text.push_str(line);
        }
    }
    debug_assert_eq!(estimate_tokens(&text), size.tokens());
    let tokens = size.tokens();
    (text, chosen.into_iter().map(|(b, _)| b).collect(), tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_learning_domain::Stage;

    fn bullet(section: &str, content: &str) -> Bullet {
        Bullet {
            id: uuid::Uuid::new_v4(),
            namespace: "t".into(),
            section: section.into(),
            content: content.into(),
            helpful: 0,
            harmful: 0,
            evidence: 1,
            stage: Stage::Shadow,
            sources: vec![],
            deleted: false,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn never_exceeds_the_budget() {
        let sections = vec!["strategy".to_string(), "facts".to_string()];
        let ranked: Vec<Bullet> = (0..40)
            .map(|i| {
                bullet(
                    if i % 2 == 0 { "strategy" } else { "facts" },
                    &"word ".repeat(1 + (i * 7) % 23),
                )
            })
            .collect();
        for budget in [0, 5, 17, 40, 100, 333, 10_000] {
            let (text, chosen, tokens) = fit(&sections, &ranked, budget);
            assert!(tokens <= budget, "budget {budget}: {tokens}");
            assert_eq!(tokens, estimate_tokens(&text));
            if budget >= 10_000 {
                assert_eq!(chosen.len(), ranked.len());
            }
        }
    }

    /// Fitting by rendering every candidate text in full, as the playbook is shown.
    fn fit_by_rendering<'a>(
        sections: &[String],
        ranked: &'a [Bullet],
        budget: u32,
    ) -> (String, Vec<&'a Bullet>) {
        let render = |chosen: &[&Bullet]| {
            let mut out = String::from(HEADING);
            for section in sections {
                let lines: Vec<String> = chosen
                    .iter()
                    .filter(|b| &b.section == section)
                    .map(|b| line(b))
                    .collect();
                if !lines.is_empty() {
                    out.push_str(&section_heading(section));
                    out.push_str(&lines.concat());
                }
            }
            out
        };
        let mut chosen: Vec<&Bullet> = Vec::new();
        let mut text = String::new();
        for b in ranked.iter().filter(|b| sections.contains(&b.section)) {
            chosen.push(b);
            let candidate = render(&chosen);
            if estimate_tokens(&candidate) <= budget {
                text = candidate;
            } else {
                chosen.pop();
            }
        }
        (text, chosen)
    }

    #[test]
    fn sizes_each_line_once_and_chooses_what_rendering_would() {
        let sections: Vec<String> = ["strategy", "two words", "facts"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Long words (bytes decide the estimate) and short ones (words decide it), in every
        // section, one of a section no longer listed, and blank content.
        let ranked: Vec<Bullet> = (0..60)
            .map(|i| {
                let section = ["strategy", "two words", "facts", "retired"][i % 4];
                let content = match i % 5 {
                    0 => "a b c d e f g h i j k l".repeat(1 + i % 3),
                    1 => format!("{} ", "congestion".repeat(1 + i % 4)),
                    2 => "   ".into(),
                    _ => format!("when the light is red at junction {i}, wait"),
                };
                bullet(section, &content)
            })
            .collect();
        for budget in [1, 3, 9, 20, 47, 120, 300, 1000, 100_000] {
            let (text, chosen, tokens) = fit(&sections, &ranked, budget);
            let (want_text, want) = fit_by_rendering(&sections, &ranked, budget);
            assert_eq!(text, want_text, "budget {budget}");
            let ids = |c: &[&Bullet]| c.iter().map(|b| b.id).collect::<Vec<_>>();
            assert_eq!(ids(&chosen), ids(&want), "budget {budget}");
            assert_eq!(tokens, estimate_tokens(&text), "budget {budget}");
            assert!(tokens <= budget);
            assert!(chosen.iter().all(|b| b.section != "retired"));
            for b in &chosen {
                assert!(text.contains(&b.id.simple().to_string()[..8]));
            }
        }
        let (_, all, _) = fit(&sections, &ranked, 100_000);
        assert_eq!(
            all.len(),
            45,
            "every listed section's bullet fits a large budget"
        );
    }

    #[test]
    fn skips_a_long_bullet_for_a_short_one() {
        let sections = vec!["facts".to_string()];
        let ranked = vec![
            bullet("facts", &"long ".repeat(200)),
            bullet("facts", "short"),
        ];
        let (text, chosen, _) = fit(&sections, &ranked, 30);
        assert_eq!(chosen.len(), 1);
        assert!(text.contains("short"));
    }

    #[test]
    fn track_record_breaks_ties() {
        let mut good = bullet("facts", "a");
        good.helpful = 5;
        let mut bad = bullet("facts", "b");
        bad.harmful = 5;
        assert!(score(0.7, &good) > score(0.7, &bad));
    }
}
